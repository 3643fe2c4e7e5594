use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Tensor};

use super::gelu::gelu_tanh;
use super::matmul::linear;
use crate::config::Activation;

/// `Dense → GELU → Dropout → Dense → Dropout`, as the reference `MlpBlock`.
#[derive(Module, Debug)]
pub struct MlpBlock {
    pub dense_0: Linear,
    pub dense_1: Linear,
    dropout: Dropout,
    #[module(skip)]
    activation: Activation,
}

impl MlpBlock {
    pub fn new(
        hidden_size: usize,
        mlp_dim: usize,
        dropout: f64,
        activation: Activation,
        device: &Device,
    ) -> Self {
        // Reference init: xavier_uniform kernels, normal(1e-6) biases.
        let dense = |d_in, d_out| {
            let layer = LinearConfig::new(d_in, d_out)
                .with_initializer(Initializer::XavierUniform { gain: 1.0 })
                .init(device);
            Linear {
                bias: Some(
                    Initializer::Normal {
                        mean: 0.0,
                        std: 1e-6,
                    }
                    .init([d_out], device),
                ),
                ..layer
            }
        };
        Self::from_layers(
            dense(hidden_size, mlp_dim),
            dense(mlp_dim, hidden_size),
            dropout,
            activation,
        )
    }

    pub fn from_layers(
        dense_0: Linear,
        dense_1: Linear,
        dropout: f64,
        activation: Activation,
    ) -> Self {
        Self {
            dense_0,
            dense_1,
            dropout: DropoutConfig::new(dropout).init(),
            activation,
        }
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = linear(&self.dense_0, x);
        let x = match self.activation {
            Activation::GeluTanh => gelu_tanh(x),
            Activation::GeluExact => gelu(x),
        };
        let x = self.dropout.forward(x);
        let x = linear(&self.dense_1, x);
        self.dropout.forward(x)
    }
}
