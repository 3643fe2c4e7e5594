//! The float parameters of a module by path (`encoder.blocks.0.mlp.dense_0.weight`):
//! how optimiser buffers and EMA weights are saved and found again.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;

/// A float parameter of a module: where it sits, its id and its shape.
pub struct Parameter {
    pub path: String,
    pub id: ParamId,
    pub shape: Vec<usize>,
}

/// Every float parameter of `module`, in visiting order.
pub fn parameters<M: Module>(module: &M) -> Vec<Parameter> {
    let mut visitor = Parameters::default();
    module.visit(&mut visitor);
    visitor.found
}

#[derive(Default)]
struct Parameters {
    /// The module names from the root to where the visit is.
    path: Vec<String>,
    found: Vec<Parameter>,
}

impl ModuleVisitor for Parameters {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.found.push(Parameter {
            path: self.path.join("."),
            id: param.id,
            shape: param.shape().dims::<D>().to_vec(),
        });
    }
}
