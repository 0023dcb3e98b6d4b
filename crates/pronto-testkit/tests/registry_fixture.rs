//! The registry fixture leaves nothing behind: its process is gone and its storage deleted.

use pronto_testkit::registry::TestRegistry;

#[test]
fn stop_kills_the_registry_and_drop_removes_its_storage() {
    let registry = TestRegistry::start();
    let pid = registry.pid().unwrap();
    let storage = registry
        .blob_path(&pronto_image::Digest::of(b""))
        .ancestors()
        .nth(9)
        .unwrap()
        .to_owned();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(storage.exists(), "{}", storage.display());
    std::net::TcpStream::connect(registry.addr()).expect("registry listens");
    drop(registry);
    // Reaped by stop(): no zombie, no process.
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "registry {pid} still running"
    );
    assert!(
        !storage.exists(),
        "storage {} left behind",
        storage.display()
    );
}
