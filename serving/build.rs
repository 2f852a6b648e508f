// The web client's build is compiled into the crate (`include_dir!` in src/api/client.rs),
// which cargo does not track: rebuild when it changes.
fn main() {
    println!("cargo:rerun-if-changed=../web/dist");
}
