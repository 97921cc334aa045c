//! The strongroom KMS (requirements R1, R2, R4, R5, R7, R8).
pub mod crypto;
pub mod jose;
