"""Readers of the files a user brings for one photo: the photo itself (images.py, with a pixel limit
checked before decoding), Detectron IUV/INDS PNGs (iuv_png.py), detectron2 `apply_net.py dump` files
(detectron2_dump.py), the choice of one person among several (selection.py), and a photo with its
DensePose and parsing files decoded and checked together (photos.py).

Used by inference, evaluation, the web page and the dataset build (data_prep), so every command reads
a photo the same way; nothing here imports data_prep.
"""
