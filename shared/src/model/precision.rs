//! What the encoder blocks compute in: float32, or bfloat16 mixed precision as PyTorch's
//! autocast runs a ViT.
//!
//! With [`Precision::Bf16`] each block's attention and MLP branches take the LayerNorm's
//! output in bfloat16 and compute their matrix products, attention and GELU in
//! bfloat16, the weights cast from their float32 values on use; the branch's output
//! returns to float32 before it joins the residual stream. So, as under autocast, the
//! weights (and therefore their gradients and the optimizer state), the residual
//! stream, LayerNorms, patch embedding, head and loss stay float32, and what the
//! backward pass keeps of the branches (their inputs, the largest part of training's
//! memory) is half the size. Tensor-core GPUs multiply bfloat16 several times faster
//! than float32.

use std::fmt;
use std::str::FromStr;

use burn::tensor::{DType, Tensor};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in float32.
    #[default]
    Fp32,
    /// The blocks' branches in bfloat16, the rest in float32 (see the module's
    /// documentation).
    Bf16,
}

impl Precision {
    /// `x` (a branch's input) in the branch's dtype.
    pub(crate) fn branch_input<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Self::Fp32 => x,
            Self::Bf16 => x.cast(DType::BF16),
        }
    }

    /// `x` (a branch's output) in the residual stream's dtype, float32.
    pub(crate) fn branch_output<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Self::Fp32 => x,
            Self::Bf16 => x.cast(DType::F32),
        }
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "fp32" => Ok(Self::Fp32),
            "bf16" => Ok(Self::Bf16),
            _ => Err(format!("expected `fp32` or `bf16`, not `{text}`")),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Fp32 => "fp32",
            Self::Bf16 => "bf16",
        })
    }
}
