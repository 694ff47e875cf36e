"""letterbox: where the content lands when the padding is odd, and the exact pixels the inverse
returns (the forward placement and m2e_jax.preprocess.unfit share the box, so a round trip alone
cannot see an offset that is off by one in both directions)."""

import numpy as np
import pytest

from m2e_jax import letterbox, preprocess


@pytest.mark.parametrize("h, w, axis", [(90, 60, 1), (60, 90, 0)])
def test_odd_padding_is_floored_and_the_inverse_crops_exactly_the_content(h, w, axis):
    """90x60 (or 60x90) into 32x32: the content is 32x21 (21x32), 11 pixels of padding, 5 before it
    and 6 after (the floor of 5.5; rounding would place it at 6)."""
    box = letterbox.letterbox(h, w, 32, 32)
    assert (box.new_h, box.new_w)[axis] == 21 and (box.top, box.left)[axis] == 5
    assert (box.top, box.left)[1 - axis] == 0
    white = np.full((h, w, 3), 255, np.uint8)
    fitted = letterbox.resize_image(white, box)
    along = fitted[16, :, 0] if axis == 1 else fitted[:, 16, 0]
    np.testing.assert_array_equal(along, [0] * 5 + [255] * 21 + [0] * 6)
    labels = letterbox.resize_labels(np.full((h, w), 7, np.uint8), box)
    np.testing.assert_array_equal(labels, fitted[..., 0] // 255 * 7)

    # The inverse: content +1, padding -1 at network size; the photo-size result is +1 everywhere,
    # exactly (a crop shifted by one pixel would blend a row or column of padding into the edge).
    net = np.where(fitted[..., :1] == 255, 1.0, -1.0).astype(np.float32)
    back = preprocess.unfit(net, box)
    assert back.shape == (h, w, 1)
    np.testing.assert_array_equal(back, np.ones((h, w, 1), np.float32))
