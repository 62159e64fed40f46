//! PROXY protocol v1/v2 header decoder (sans-IO).
