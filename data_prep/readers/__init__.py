"""Readers of the files users bring: photos, DensePose outputs (Detectron IUV PNGs, detectron2 dumps),
and dataset layouts (generic folder, DeepFashion In-shop, MVC)."""
