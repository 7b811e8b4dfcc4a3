//! A Python worker on its own, for this crate's tests. The node runs the
//! same code as `woof __python-worker`.

fn main() {
    std::process::exit(woof_python::worker::serve());
}
