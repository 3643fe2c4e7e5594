//! Attention rollout (Abnar & Zuidema, 2020): how much each image patch feeds
//! the class token once attention is followed through every layer.
//!
//! Per layer: average the heads, add the identity (the residual path), and
//! renormalise rows; the rollout is the product of these matrices from the
//! last layer down to the first. Only the class-token row is shown, so it is
//! computed as a row vector times each matrix: O(layers · tokens²) instead of
//! a full matrix product per layer. Of the last layer only that row is read, so
//! it may hold the class token's row alone (as the model computes it).

/// One layer's attention probabilities for one image, `[heads, queries, tokens]`
/// row-major (row = query token, column = key token): every token's row
/// (`queries` = `tokens`), or in the last layer possibly the class token's alone
/// (`queries` = 1).
#[derive(Debug, Clone, Copy)]
pub struct LayerAttention<'a> {
    pub heads: usize,
    pub queries: usize,
    pub tokens: usize,
    pub probabilities: &'a [f32],
}

/// Attention maps that cannot be rolled out.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RolloutError {
    #[error("no attention layers to roll out")]
    NoLayers,
    #[error(
        "layer {layer}: {len} attention values do not make {heads} heads of {queries}x{tokens} tokens"
    )]
    Shape {
        layer: usize,
        heads: usize,
        queries: usize,
        tokens: usize,
        len: usize,
    },
    #[error(
        "layer {layer} holds {queries} of {tokens} query rows: only the last layer may hold the class token's row alone"
    )]
    PartialLayer {
        layer: usize,
        queries: usize,
        tokens: usize,
    },
    #[error("layer {layer} has {tokens} tokens where layer 0 has {expected}")]
    TokenCount {
        layer: usize,
        tokens: usize,
        expected: usize,
    },
    #[error("{prefix} prefix tokens leave no patch tokens out of {tokens}")]
    NoPatches { prefix: usize, tokens: usize },
}

/// Rollout weight of each patch token for the class token, in patch order
/// (row-major over the patch grid). `prefix_tokens` is 1 with a class token;
/// with 0 (global average pooling) the mean over all query tokens is used.
pub fn class_token_rollout(
    layers: &[LayerAttention<'_>],
    prefix_tokens: usize,
) -> Result<Vec<f32>, RolloutError> {
    let tokens = check_shapes(layers)?;
    if prefix_tokens >= tokens {
        return Err(RolloutError::NoPatches {
            prefix: prefix_tokens,
            tokens,
        });
    }
    // Rows other than the class token's are read everywhere but from a class-token row.
    for (index, layer) in layers.iter().enumerate() {
        let last = index + 1 == layers.len();
        if layer.queries != tokens && !(last && layer.queries == 1 && prefix_tokens > 0) {
            return Err(RolloutError::PartialLayer {
                layer: index,
                queries: layer.queries,
                tokens,
            });
        }
    }
    // Start from the query row(s) the classifier reads.
    let mut row = vec![0.0f64; tokens];
    if prefix_tokens > 0 {
        row[0] = 1.0;
    } else {
        row.fill(1.0 / tokens as f64);
    }
    for layer in layers.iter().rev() {
        row = row_times(&row, &mixed_attention(layer));
    }
    Ok(row[prefix_tokens..].iter().map(|&w| w as f32).collect())
}

/// Checks every layer is `[heads, Q, T]` with one `T`; returns `T`.
fn check_shapes(layers: &[LayerAttention<'_>]) -> Result<usize, RolloutError> {
    let expected = layers.first().ok_or(RolloutError::NoLayers)?.tokens;
    for (index, layer) in layers.iter().enumerate() {
        if layer.tokens != expected {
            return Err(RolloutError::TokenCount {
                layer: index,
                tokens: layer.tokens,
                expected,
            });
        }
        if layer.heads == 0
            || layer.queries == 0
            || layer.probabilities.len() != layer.heads * layer.queries * layer.tokens
        {
            return Err(RolloutError::Shape {
                layer: index,
                heads: layer.heads,
                queries: layer.queries,
                tokens: layer.tokens,
                len: layer.probabilities.len(),
            });
        }
    }
    Ok(expected)
}

/// `rownorm(mean_heads(A) + I)`, `[Q, T]` row-major (the layer's query rows), in f64
/// so that twelve layers of products do not lose the small weights.
fn mixed_attention(layer: &LayerAttention<'_>) -> Vec<f64> {
    let tokens = layer.tokens;
    let plane = layer.queries * tokens;
    let mut mixed = vec![0.0f64; plane];
    for head in layer.probabilities.chunks_exact(plane) {
        for (sum, &p) in mixed.iter_mut().zip(head) {
            *sum += f64::from(p);
        }
    }
    let heads = layer.heads as f64;
    for (index, row) in mixed.chunks_exact_mut(tokens).enumerate() {
        for value in row.iter_mut() {
            *value /= heads;
        }
        row[index] += 1.0;
        let total: f64 = row.iter().sum();
        if total > 0.0 {
            for value in row.iter_mut() {
                *value /= total;
            }
        }
    }
    mixed
}

/// `row · matrix` for a row-major matrix of `row.len()` columns and at most as many rows
/// (`row`'s weights beyond them are zero: a class-token row).
fn row_times(row: &[f64], matrix: &[f64]) -> Vec<f64> {
    let tokens = row.len();
    let mut out = vec![0.0f64; tokens];
    for (&weight, matrix_row) in row.iter().zip(matrix.chunks_exact(tokens)) {
        if weight == 0.0 {
            continue;
        }
        for (acc, &value) in out.iter_mut().zip(matrix_row) {
            *acc += weight * value;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(actual: &[f32], expected: &[f32]) {
        assert_eq!(actual.len(), expected.len());
        for (a, e) in actual.iter().zip(expected) {
            assert!((a - e).abs() < 1e-6, "{actual:?} != {expected:?}");
        }
    }

    /// Tokens: class, p1, p2; two heads in each of two layers.
    ///
    /// Layer 1 heads average to [[.5,.25,.25],[0,1,0],[0,0,1]]; + I and row
    /// normalisation give M1 = [[.75,.125,.125],[0,1,0],[0,0,1]].
    /// Layer 2 (both heads [[0,1,0],[0,1,0],[0,0,1]]) gives
    /// M2 = [[.5,.5,0],[0,1,0],[0,0,1]].
    /// Rollout = M2·M1, class row = .5·M1[0] + .5·M1[1] = [.375, .5625, .0625].
    #[test]
    fn hand_computed_two_layers() {
        #[rustfmt::skip]
        let layer1 = [
            0.5, 0.5, 0.0,   0.0, 1.0, 0.0,   0.0, 0.0, 1.0,
            0.5, 0.0, 0.5,   0.0, 1.0, 0.0,   0.0, 0.0, 1.0,
        ];
        #[rustfmt::skip]
        let layer2 = [
            0.0, 1.0, 0.0,   0.0, 1.0, 0.0,   0.0, 0.0, 1.0,
            0.0, 1.0, 0.0,   0.0, 1.0, 0.0,   0.0, 0.0, 1.0,
        ];
        let layers = [
            LayerAttention {
                heads: 2,
                queries: 3,
                tokens: 3,
                probabilities: &layer1,
            },
            LayerAttention {
                heads: 2,
                queries: 3,
                tokens: 3,
                probabilities: &layer2,
            },
        ];
        close(&class_token_rollout(&layers, 1).unwrap(), &[0.5625, 0.0625]);
        // The other order (M1·M2) would give [.5, .125]: layer order matters.
        let reversed = [layers[1], layers[0]];
        close(&class_token_rollout(&reversed, 1).unwrap(), &[0.5, 0.125]);
    }

    #[test]
    fn uniform_attention_spreads_evenly_and_gap_uses_all_rows() {
        let uniform = [0.25f32; 16];
        let layer = LayerAttention {
            heads: 1,
            queries: 4,
            tokens: 4,
            probabilities: &uniform,
        };
        // (U + I)/2 from a one-hot class row: .125 to each other token.
        close(
            &class_token_rollout(&[layer], 1).unwrap(),
            &[0.125, 0.125, 0.125],
        );
        // Without a class token every token is a patch; rows stay stochastic.
        let weights = class_token_rollout(&[layer, layer], 0).unwrap();
        close(&weights, &[0.25; 4]);
    }

    #[test]
    fn shape_errors_are_reported() {
        assert_eq!(class_token_rollout(&[], 1), Err(RolloutError::NoLayers));
        let short = [0.0f32; 8];
        let layer = LayerAttention {
            heads: 1,
            queries: 3,
            tokens: 3,
            probabilities: &short,
        };
        assert!(matches!(
            class_token_rollout(&[layer], 1),
            Err(RolloutError::Shape { layer: 0, .. })
        ));
        let one = [1.0f32];
        let single = LayerAttention {
            heads: 1,
            queries: 1,
            tokens: 1,
            probabilities: &one,
        };
        assert!(matches!(
            class_token_rollout(&[single], 1),
            Err(RolloutError::NoPatches { .. })
        ));
    }
    /// The last layer may hold the class token's row alone (as the model computes it
    /// with a class token): the same rollout as from the whole layer. Nowhere else, and
    /// not without a class token (average pooling reads every row).
    #[test]
    fn last_layer_may_hold_the_class_row_alone() {
        #[rustfmt::skip]
        let first = [
            0.5, 0.5, 0.0,   0.0, 1.0, 0.0,   0.2, 0.3, 0.5,
            0.5, 0.0, 0.5,   0.1, 0.8, 0.1,   0.0, 0.0, 1.0,
        ];
        #[rustfmt::skip]
        let last = [
            0.1, 0.6, 0.3,   0.0, 1.0, 0.0,   0.0, 0.0, 1.0,
            0.3, 0.3, 0.4,   0.0, 1.0, 0.0,   0.0, 0.0, 1.0,
        ];
        let class_rows = [0.1, 0.6, 0.3, 0.3, 0.3, 0.4];
        let layer = |queries, probabilities| LayerAttention {
            heads: 2,
            queries,
            tokens: 3,
            probabilities,
        };
        let whole = class_token_rollout(&[layer(3, &first), layer(3, &last)], 1).unwrap();
        let partial = class_token_rollout(&[layer(3, &first), layer(1, &class_rows)], 1).unwrap();
        close(&partial, &whole);
        assert!(whole.iter().all(|&weight| weight > 0.01));
        assert_eq!(
            class_token_rollout(&[layer(1, &class_rows), layer(3, &last)], 1),
            Err(RolloutError::PartialLayer {
                layer: 0,
                queries: 1,
                tokens: 3
            })
        );
        assert!(matches!(
            class_token_rollout(&[layer(3, &first), layer(1, &class_rows)], 0),
            Err(RolloutError::PartialLayer { layer: 1, .. })
        ));
    }
}
