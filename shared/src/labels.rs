//! Class names of the data sets the project knows by name.

/// CIFAR-10 classes in the official label order.
pub const CIFAR10: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Owned copies of a label list.
pub fn owned(labels: &[&str]) -> Vec<String> {
    labels.iter().map(|label| label.to_string()).collect()
}
