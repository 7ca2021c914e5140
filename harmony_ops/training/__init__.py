"""Training numerics (losses, one optimisation step's loss per task, augmentation): torch and diffusers only."""
