//! PKCS#11 HSM access.
