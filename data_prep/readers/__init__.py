"""Dataset layouts (generic folder, DeepFashion In-shop and its Pose-Transfer crops, MVC) and finding
each photo's DensePose files in them. The readers of one photo's files (images, Detectron IUV PNGs,
detectron2 dumps) are m2e_jax.readers, shared with inference."""
