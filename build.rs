// Migrations are compiled in with include_str!; make Cargo rebuild when one is added.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
