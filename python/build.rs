//! Tells the crate where `rustpython-pylib` keeps the Python standard
//! library's source, so that `re`'s few files can be compiled in
//! (`src/modules/re.rs`); nothing else of it is.

fn main() {
    println!("cargo:rustc-env=WOOF_PYLIB={}", rustpython_pylib::LIB_PATH);
    println!("cargo:rerun-if-changed=build.rs");
}
