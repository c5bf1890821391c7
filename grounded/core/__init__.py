"""Core types and pure functions: detections, boxes, masks, prompts, images, levels. No model code, no I/O
beyond reading images and writing files atomically; imports nothing from the layers above."""
