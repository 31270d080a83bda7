"""GAN models on vkernels' public API: StyleGAN2 (stylegan2.py) and the training entry point (train.py)."""
