"""The camera input path: per-camera intake, latest-message synchronisation, the TF cache."""
