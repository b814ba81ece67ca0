"""latentfit: one latent-variable model of MNIST fitted as a VAE and by direct MC likelihood."""
