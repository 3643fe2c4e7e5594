//! Placeholder: the browser app is built by its own issue.
