//! Resizing the grid of position embeddings to another resolution, exactly as the
//! reference does it: `scipy.ndimage.zoom(grid, order=1)` on the `(g, g, D)` grid,
//! i.e. bilinear with aligned corners, the class token row kept aside.

use super::CheckpointError;
use super::google::grid_side;
use super::params::Array;

/// Resizes `[1, prefix + g·g, D]` position embeddings to a `new_grid × new_grid` grid.
pub fn resize_pos_embedding(
    pos_embedding: &Array,
    prefix_tokens: usize,
    new_grid: usize,
) -> Result<Array, CheckpointError> {
    let [1, tokens, dim] = pos_embedding.shape[..] else {
        return Err(CheckpointError::Architecture(format!(
            "position embeddings have shape {:?}, expected [1, tokens, D]",
            pos_embedding.shape
        )));
    };
    let old_grid = grid_side(tokens.saturating_sub(prefix_tokens))?;
    if new_grid == 0 {
        return Err(CheckpointError::Architecture(
            "cannot resize to an empty grid".into(),
        ));
    }
    let grid = &pos_embedding.data[prefix_tokens * dim..];
    let axis = AxisWeights::new(old_grid, new_grid);
    let mut data = Vec::with_capacity((prefix_tokens + new_grid * new_grid) * dim);
    data.extend_from_slice(&pos_embedding.data[..prefix_tokens * dim]);
    for row in 0..new_grid {
        let (r0, r1, wr) = axis.at(row);
        for col in 0..new_grid {
            let (c0, c1, wc) = axis.at(col);
            let cell = |r: usize, c: usize, k: usize| f64::from(grid[(r * old_grid + c) * dim + k]);
            for k in 0..dim {
                let top = cell(r0, c0, k) * (1.0 - wc) + cell(r0, c1, k) * wc;
                let bottom = cell(r1, c0, k) * (1.0 - wc) + cell(r1, c1, k) * wc;
                data.push((top * (1.0 - wr) + bottom * wr) as f32);
            }
        }
    }
    Ok(Array::new(
        vec![1, prefix_tokens + new_grid * new_grid, dim],
        data,
    ))
}

/// Source positions along one axis with aligned corners:
/// `x = out·(n_old − 1)/(n_new − 1)` (0 when the output has one cell, as scipy).
struct AxisWeights {
    old: usize,
    scale: f64,
}

impl AxisWeights {
    fn new(old: usize, new: usize) -> Self {
        let scale = if new > 1 {
            (old - 1) as f64 / (new - 1) as f64
        } else {
            0.0
        };
        Self { old, scale }
    }

    /// Lower index, upper index, and the weight of the upper one.
    fn at(&self, out: usize) -> (usize, usize, f64) {
        let x = out as f64 * self.scale;
        let low = (x.floor() as usize).min(self.old - 1);
        let high = (low + 1).min(self.old - 1);
        (low, high, x - low as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corners_are_kept_and_midpoints_interpolated() {
        // 2x2 grid, D = 1, with a class token 9.
        let pos = Array::new(vec![1, 5, 1], vec![9., 0., 1., 2., 3.]);
        let out = resize_pos_embedding(&pos, 1, 3).unwrap();
        assert_eq!(out.shape, vec![1, 10, 1]);
        assert_eq!(out.data, vec![9., 0., 0.5, 1., 1., 1.5, 2., 2., 2.5, 3.]);
    }

    #[test]
    fn same_size_is_identity_and_bad_grids_fail() {
        let pos = Array::new(vec![1, 4, 2], (0..8).map(|v| v as f32).collect());
        assert_eq!(resize_pos_embedding(&pos, 0, 2).unwrap(), pos);
        let not_square = Array::new(vec![1, 3, 2], vec![0.; 6]);
        assert!(resize_pos_embedding(&not_square, 0, 2).is_err());
        assert!(resize_pos_embedding(&pos, 0, 0).is_err());
    }
}
