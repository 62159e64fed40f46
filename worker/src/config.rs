//! Configuration: types, YAML loading and validation.
