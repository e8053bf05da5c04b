"""Pure sampling functions: flow-matching schedule helpers, guidance, the denoising loop."""
