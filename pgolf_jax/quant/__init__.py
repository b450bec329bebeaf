"""Post-training quantization (int8, GPTQ/RTN, LQER), QAT, calibration, the packed artifact and
reference-format interop."""
