"""The offline images' own tests: they need root, buildah and debootstrap (`make test-images`)."""
