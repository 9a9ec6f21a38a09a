//! Vagrant's published insecure key pairs (`keys/`, from hashicorp/vagrant): a vagrant box
//! is entered with them once, and its key is replaced by the environment's at once.

use russh::keys::PrivateKey;

const ED25519: &str = include_str!("../keys/vagrant.key.ed25519");
const RSA: &str = include_str!("../keys/vagrant.key.rsa");

pub fn keys() -> Vec<PrivateKey> {
    [ED25519, RSA]
        .iter()
        .filter_map(|k| russh::keys::decode_secret_key(k, None).ok())
        .collect()
}

#[cfg(test)]
#[test]
fn both_published_keys_load() {
    assert_eq!(keys().len(), 2);
}
