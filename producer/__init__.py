"""faceq producer: plan jobs, enqueue chunks, follow progress."""
