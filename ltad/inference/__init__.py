"""What serves a trained model: the export formats, the `Predictor`, `ltad predict` over many images."""
