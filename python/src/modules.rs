//! What a handler may import, and nothing else.
//!
//! RustPython without `host_env` compiles no module that reaches the host
//! (files, sockets, processes, the environment, ctypes). On top of that a
//! handler's `import` goes through [`import`], which serves only the
//! modules listed in [`ALLOWED`] and refuses every other name with an
//! `ImportError` that says what is allowed.
//!
//! `json`, `math` and `struct` are written here in Rust (the interpreter
//! built this small has none of them); `collections` is a small module of
//! our own around the interpreter's `deque`, and `statistics` one in Python
//! (`modules/statistics.py`); `time`, `itertools` and `functools` are the
//! interpreter's own; `re` is CPython's Python code over the interpreter's
//! native `_sre` engine ([`re`]). `re`, `statistics` and `struct` are made on a
//! handler's first import of them, so a worker whose handler does not
//! import them does not pay for them.

mod re;
mod structs;

use std::cell::RefCell;
use std::collections::HashMap;

use rustpython_vm::builtins::{PyBytes, PyDictRef, PyStr};
use rustpython_vm::function::{ArgIntoFloat, FuncArgs, OptionalArg};
use rustpython_vm::py_serde::{PyObjectDeserializer, PyObjectSerializer};
use rustpython_vm::scope::Scope;
use rustpython_vm::{AsObject, PyObjectRef, PyResult, VirtualMachine};
use serde::de::DeserializeSeed;

/// The modules a handler may import.
pub const ALLOWED: &[&str] = &[
    "json",
    "math",
    "time",
    "collections",
    "itertools",
    "functools",
    "struct",
    "re",
    "statistics",
];

thread_local! {
    /// The modules [`import`] serves, made once when the worker loads.
    static MODULES: RefCell<HashMap<String, PyObjectRef>> = RefCell::new(HashMap::new());
}

/// Makes the allowed modules and puts [`import`] in place of the
/// interpreter's own `__import__` (which nothing a handler can reach keeps).
pub fn install(vm: &VirtualMachine) -> PyResult<()> {
    let mut modules = HashMap::new();
    modules.insert("json".to_string(), json(vm)?);
    modules.insert("math".to_string(), math(vm)?);
    for native in ["time", "itertools"] {
        modules.insert(native.to_string(), vm.import(native, 0)?);
    }
    modules.insert(
        "collections".to_string(),
        from_source(vm, "collections", COLLECTIONS)?,
    );
    modules.insert(
        "functools".to_string(),
        from_source(vm, "functools", FUNCTOOLS)?,
    );
    MODULES.with(|m| *m.borrow_mut() = modules);

    let builtins = vm.builtins.as_object();
    builtins.set_attr("__import__", vm.new_function("__import__", import), vm)?;
    // Files and the console: nothing to reach them is compiled in, but a
    // name that exists and then fails would only confuse.
    for gone in ["open", "input", "breakpoint", "help", "exit", "quit"] {
        let _ = builtins.del_attr(gone, vm);
    }
    Ok(())
}

/// `__import__(name, globals=None, locals=None, fromlist=(), level=0)`.
fn import(args: FuncArgs, vm: &VirtualMachine) -> PyResult {
    let name = args
        .args
        .first()
        .and_then(|n| {
            n.downcast_ref::<PyStr>()
                .map(|s| s.to_string_lossy().into_owned())
        })
        .ok_or_else(|| vm.new_type_error("__import__() needs a module name"))?;
    let level = args
        .args
        .get(4)
        .cloned()
        .or_else(|| args.kwargs.get("level").cloned())
        .map(|l| l.try_into_value::<i64>(vm))
        .transpose()?
        .unwrap_or(0);
    if level == 0
        && let Some(module) = MODULES.with(|m| m.borrow().get(&name).cloned())
    {
        return Ok(module);
    }
    // Only while `re` loads: its own imports, relative ones included.
    if let Some(module) = re::LOADING.with(|l| l.borrow().get(&(level, name.clone())).cloned()) {
        return Ok(module);
    }
    if level != 0 {
        return Err(vm.new_import_error(
            "relative imports are not available in a woof handler".to_owned(),
            vm.ctx.new_str(name),
        ));
    }
    let lazy = match name.as_str() {
        "re" => Some(re::load(vm)),
        "struct" => Some(structs::module(vm)),
        "statistics" => Some(from_source(vm, "statistics", STATISTICS)),
        _ => None,
    };
    if let Some(module) = lazy {
        let module = module?;
        MODULES.with(|m| m.borrow_mut().insert(name, module.clone()));
        return Ok(module);
    }
    Err(vm.new_import_error(
        format!(
            "import of {name:?} is not allowed in a woof handler; it may import {}",
            ALLOWED.join(", ")
        ),
        vm.ctx.new_str(name),
    ))
}

/// A module from Python source, run with the interpreter's own import.
fn from_source(vm: &VirtualMachine, name: &str, source: &str) -> PyResult<PyObjectRef> {
    let code = vm
        .compile(
            source,
            rustpython_vm::compiler::Mode::Exec,
            format!("<woof {name}>"),
        )
        .map_err(|e| vm.new_syntax_error(&e, Some(source)))?;
    let scope = vm.new_scope_with_builtins();
    scope
        .globals
        .set_item("__name__", vm.ctx.new_str(name).into(), vm)?;
    vm.run_code_obj(code, scope.clone())?;
    Ok(vm.new_module(name, scope.globals, None).into())
}

/// Runs `text` as module `name` in `dict`.
fn run_in(vm: &VirtualMachine, name: &str, text: &str, dict: &PyDictRef) -> PyResult<()> {
    let code = vm
        .compile(
            text,
            rustpython_vm::compiler::Mode::Exec,
            format!("<woof {name}>"),
        )
        .map_err(|e| vm.new_syntax_error(&e, Some(text)))?;
    dict.set_item("__name__", vm.ctx.new_str(name).into(), vm)?;
    let scope = Scope::with_builtins(None, dict.clone(), vm);
    vm.run_code_obj(code, scope)?;
    Ok(())
}

fn module(
    vm: &VirtualMachine,
    name: &str,
    items: Vec<(&str, PyObjectRef)>,
) -> PyResult<PyObjectRef> {
    let dict = vm.ctx.new_dict();
    for (key, value) in items {
        dict.set_item(key, value, vm)?;
    }
    Ok(vm.new_module(name, dict, None).into())
}

const COLLECTIONS: &str = r#"
from _collections import deque

class defaultdict(dict):
    def __init__(self, default_factory=None, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.default_factory = default_factory
    def __missing__(self, key):
        if self.default_factory is None:
            raise KeyError(key)
        value = self[key] = self.default_factory()
        return value
    def __repr__(self):
        return f"defaultdict({self.default_factory!r}, {dict.__repr__(self)})"

class Counter(dict):
    def __init__(self, iterable=None, **kwargs):
        super().__init__()
        self.update(iterable, **kwargs)
    def __missing__(self, key):
        return 0
    def update(self, iterable=None, **kwargs):
        if iterable is not None:
            if isinstance(iterable, dict):
                for key, count in iterable.items():
                    self[key] = self[key] + count
            else:
                for key in iterable:
                    self[key] = self[key] + 1
        for key, count in kwargs.items():
            self[key] = self[key] + count
    def most_common(self, n=None):
        ranked = sorted(self.items(), key=lambda kv: kv[1], reverse=True)
        return ranked if n is None else ranked[:n]
    def total(self):
        return sum(self.values())
"#;

/// `statistics`, ours: the standard one needs fractions, decimal and random.
const STATISTICS: &str = include_str!("modules/statistics.py");

const FUNCTOOLS: &str = r#"
from _functools import reduce, partial
"#;

fn json(vm: &VirtualMachine) -> PyResult<PyObjectRef> {
    module(
        vm,
        "json",
        vec![
            ("loads", vm.new_function("loads", json_loads).into()),
            ("dumps", vm.new_function("dumps", json_dumps).into()),
        ],
    )
}

/// `json.loads(text)`: `str` or UTF-8 `bytes`.
fn json_loads(text: PyObjectRef, vm: &VirtualMachine) -> PyResult {
    let text: Vec<u8> = if let Some(s) = text.downcast_ref::<PyStr>() {
        s.to_string_lossy().as_bytes().to_vec()
    } else if let Some(b) = text.downcast_ref::<PyBytes>() {
        b.as_bytes().to_vec()
    } else {
        return Err(vm.new_type_error(format!(
            "json.loads() takes str or bytes, not {}",
            text.class().name()
        )));
    };
    let mut reader = serde_json::Deserializer::from_slice(&text);
    let value = PyObjectDeserializer::new(vm)
        .deserialize(&mut reader)
        .and_then(|v| reader.end().map(|()| v))
        .map_err(|e| vm.new_value_error(format!("json.loads(): {e}")))?;
    Ok(value)
}

/// `json.dumps(value)`: compact JSON text.
fn json_dumps(value: PyObjectRef, vm: &VirtualMachine) -> PyResult<String> {
    serde_json::to_string(&PyObjectSerializer::new(vm, &value))
        .map_err(|e| vm.new_type_error(format!("json.dumps(): {e}")))
}

fn math(vm: &VirtualMachine) -> PyResult<PyObjectRef> {
    macro_rules! unary {
        ($name:literal, $f:expr) => {
            (
                $name,
                vm.new_function($name, |x: ArgIntoFloat, vm: &VirtualMachine| {
                    let x = x.into_float();
                    if x.is_nan() {
                        Ok(x)
                    } else {
                        checked(vm, ($f)(x))
                    }
                })
                .into(),
            )
        };
    }
    let items = vec![
        unary!("sqrt", f64::sqrt),
        unary!("exp", f64::exp),
        unary!("log10", f64::log10),
        unary!("log2", f64::log2),
        unary!("sin", f64::sin),
        unary!("cos", f64::cos),
        unary!("tan", f64::tan),
        unary!("asin", f64::asin),
        unary!("acos", f64::acos),
        unary!("atan", f64::atan),
        unary!("fabs", f64::abs),
        unary!("degrees", f64::to_degrees),
        unary!("radians", f64::to_radians),
        (
            "log",
            vm.new_function(
                "log",
                |x: ArgIntoFloat, base: OptionalArg<ArgIntoFloat>, vm: &VirtualMachine| {
                    let x = x.into_float();
                    match base {
                        OptionalArg::Present(b) => checked(vm, x.ln() / b.into_float().ln()),
                        OptionalArg::Missing => checked(vm, x.ln()),
                    }
                },
            )
            .into(),
        ),
        (
            "pow",
            vm.new_function(
                "pow",
                |x: ArgIntoFloat, y: ArgIntoFloat, vm: &VirtualMachine| {
                    checked(vm, x.into_float().powf(y.into_float()))
                },
            )
            .into(),
        ),
        (
            "atan2",
            vm.new_function("atan2", |y: ArgIntoFloat, x: ArgIntoFloat| {
                y.into_float().atan2(x.into_float())
            })
            .into(),
        ),
        (
            "hypot",
            vm.new_function("hypot", |args: FuncArgs, vm: &VirtualMachine| {
                let mut sum = 0.0;
                for a in args.args {
                    let x = a.try_into_value::<ArgIntoFloat>(vm)?.into_float();
                    sum += x * x;
                }
                Ok::<f64, rustpython_vm::builtins::PyBaseExceptionRef>(sum.sqrt())
            })
            .into(),
        ),
        (
            "fsum",
            vm.new_function("fsum", |values: PyObjectRef, vm: &VirtualMachine| {
                let values: Vec<ArgIntoFloat> = values.try_to_value(vm)?;
                // Kahan summation: close to exact for the sums handlers make.
                let (mut sum, mut carry) = (0.0f64, 0.0f64);
                for v in values {
                    let y = v.into_float() - carry;
                    let t = sum + y;
                    carry = (t - sum) - y;
                    sum = t;
                }
                Ok::<f64, rustpython_vm::builtins::PyBaseExceptionRef>(sum)
            })
            .into(),
        ),
        ("floor", vm.new_function("floor", to_int(f64::floor)).into()),
        ("ceil", vm.new_function("ceil", to_int(f64::ceil)).into()),
        ("trunc", vm.new_function("trunc", to_int(f64::trunc)).into()),
        (
            "isnan",
            vm.new_function("isnan", |x: ArgIntoFloat| x.into_float().is_nan())
                .into(),
        ),
        (
            "isinf",
            vm.new_function("isinf", |x: ArgIntoFloat| x.into_float().is_infinite())
                .into(),
        ),
        (
            "isfinite",
            vm.new_function("isfinite", |x: ArgIntoFloat| x.into_float().is_finite())
                .into(),
        ),
        ("pi", vm.ctx.new_float(std::f64::consts::PI).into()),
        ("e", vm.ctx.new_float(std::f64::consts::E).into()),
        ("tau", vm.ctx.new_float(std::f64::consts::TAU).into()),
        ("inf", vm.ctx.new_float(f64::INFINITY).into()),
        ("nan", vm.ctx.new_float(f64::NAN).into()),
    ];
    module(vm, "math", items)
}

/// A result that is NaN from a number that was not is a domain error, as
/// in CPython's `math`.
fn checked(vm: &VirtualMachine, y: f64) -> PyResult<f64> {
    if y.is_nan() {
        Err(vm.new_value_error("math domain error"))
    } else {
        Ok(y)
    }
}

fn to_int(
    f: fn(f64) -> f64,
) -> impl Fn(ArgIntoFloat, &VirtualMachine) -> PyResult<PyObjectRef> + 'static {
    move |x: ArgIntoFloat, vm: &VirtualMachine| {
        let y = f(x.into_float());
        if !y.is_finite() || y.abs() >= 9.2e18 {
            return Err(vm.new_overflow_error(format!("cannot convert {y} to an int here")));
        }
        Ok(vm.ctx.new_int(y as i64).into())
    }
}

/// The value of JSON `text` (empty means `{}`), as Python sees it.
pub fn json_value(vm: &VirtualMachine, text: &str) -> PyResult {
    let text = if text.trim().is_empty() { "{}" } else { text };
    json_loads(vm.ctx.new_str(text).into(), vm)
}
