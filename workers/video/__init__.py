"""Video worker: uploaded videos (metadata, keyframes, transcript) and live camera frames."""
