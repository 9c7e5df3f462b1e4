//! End-to-end and parity tests across crates live in tests/tests/ (`host_to_device.rs`: train,
//! export, then the device against the host and ONNX Runtime).
