"""Datasets: discovery of images, sampling into epochs, bundled sample pages, image loading."""
