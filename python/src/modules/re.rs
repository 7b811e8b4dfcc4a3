//! `re`: CPython's own Python code for it (`re/__init__.py`, `_parser`,
//! `_compiler`, `_constants`, `_casefix`, as the `rustpython-pylib` crate
//! ships them; only these five files are compiled into the binary) over
//! the interpreter's native `_sre` engine.
//!
//! It is loaded on a handler's first `import re`, not at a worker's start
//! (compiling it takes tens of milliseconds). Four small edits make it run
//! without the rest of the standard library, each checked when applied (a
//! file that no longer matches is an `ImportError`, and a test fails):
//! `RegexFlag` is an `int` subclass instead of an `enum.IntFlag`; the
//! template cache is a small LRU of our own instead of
//! `functools.lru_cache`; pickling registration (`copyreg`) is gone; and
//! `warnings` is a stub that drops the few deprecation warnings `re` gives.
//! A `latin-1` codec is registered for bytes patterns.
//!
//! While it loads, and only then, its own imports (`_sre`, and the
//! relative ones between its files) are served from [`LOADING`]; a
//! handler can import `re` and nothing it is made of.

use std::cell::RefCell;
use std::collections::HashMap;

use rustpython_vm::{PyObjectRef, PyResult, VirtualMachine};

const LIB: [(&str, &str); 5] = [
    (
        "_constants",
        include_str!(concat!(env!("WOOF_PYLIB"), "/re/_constants.py")),
    ),
    (
        "_casefix",
        include_str!(concat!(env!("WOOF_PYLIB"), "/re/_casefix.py")),
    ),
    (
        "_parser",
        include_str!(concat!(env!("WOOF_PYLIB"), "/re/_parser.py")),
    ),
    (
        "_compiler",
        include_str!(concat!(env!("WOOF_PYLIB"), "/re/_compiler.py")),
    ),
    (
        "__init__",
        include_str!(concat!(env!("WOOF_PYLIB"), "/re/__init__.py")),
    ),
];

/// Each edit: the file, the text it must contain, and what replaces it.
/// `import warnings` is replaced wherever it is (3 times in each file).
const EDITS: &[(&str, &str, &str)] = &[
    ("_parser", "import warnings", "warnings = _woof_warnings"),
    ("__init__", "import warnings", "warnings = _woof_warnings"),
    ("__init__", "import enum\n", ""),
    ("__init__", "import functools\n", ""),
    (
        "__init__",
        "@enum.global_enum
@enum._simple_enum(enum.IntFlag, boundary=enum.KEEP)
class RegexFlag:
    NOFLAG = 0
    ASCII = A = _compiler.SRE_FLAG_ASCII # assume ascii \"locale\"
    IGNORECASE = I = _compiler.SRE_FLAG_IGNORECASE # ignore case
    LOCALE = L = _compiler.SRE_FLAG_LOCALE # assume current 8-bit locale
    UNICODE = U = _compiler.SRE_FLAG_UNICODE # assume unicode \"locale\"
    MULTILINE = M = _compiler.SRE_FLAG_MULTILINE # make anchors look for newline
    DOTALL = S = _compiler.SRE_FLAG_DOTALL # make dot match newline
    VERBOSE = X = _compiler.SRE_FLAG_VERBOSE # ignore whitespace and comments
    # sre extensions (experimental, don't rely on these)
    DEBUG = _compiler.SRE_FLAG_DEBUG # dump pattern after compilation
    __str__ = object.__str__
    _numeric_repr_ = hex
",
        WOOF_FLAGS,
    ),
    (
        "__init__",
        "@functools.lru_cache(_MAXCACHE)\n",
        "@_woof_lru_cache(_MAXCACHE)\n",
    ),
    (
        "__init__",
        "import copyreg

def _pickle(p):
    return _compile, (p.pattern, p.flags)

copyreg.pickle(Pattern, _pickle, _compile)
",
        "",
    ),
];

/// What stands for `enum` and `functools.lru_cache` in `re/__init__.py`.
const WOOF_FLAGS: &str = r#"class RegexFlag(int):
    """A pattern's flags. In woof an int subclass, not an enum: flags
    combine with | and & as ints do."""
    __slots__ = ()
    @property
    def value(self):
        return int(self)
    def __or__(self, other):
        if not isinstance(other, int):
            return NotImplemented
        return RegexFlag(int(self) | int(other))
    __ror__ = __or__
    def __and__(self, other):
        if not isinstance(other, int):
            return NotImplemented
        return RegexFlag(int(self) & int(other))
    __rand__ = __and__
    def __repr__(self):
        names = [n for n, v in _woof_flag_names if v & self]
        rest = int(self) & ~sum(v for _, v in _woof_flag_names)
        if rest or not names:
            names.append(hex(rest))
        return "|".join("re." + n if not n.startswith("0x") else n for n in names)
    __str__ = __repr__

NOFLAG = RegexFlag(0)
ASCII = A = RegexFlag(_compiler.SRE_FLAG_ASCII)
IGNORECASE = I = RegexFlag(_compiler.SRE_FLAG_IGNORECASE)
LOCALE = L = RegexFlag(_compiler.SRE_FLAG_LOCALE)
UNICODE = U = RegexFlag(_compiler.SRE_FLAG_UNICODE)
MULTILINE = M = RegexFlag(_compiler.SRE_FLAG_MULTILINE)
DOTALL = S = RegexFlag(_compiler.SRE_FLAG_DOTALL)
VERBOSE = X = RegexFlag(_compiler.SRE_FLAG_VERBOSE)
DEBUG = RegexFlag(_compiler.SRE_FLAG_DEBUG)
_woof_flag_names = [
    ("ASCII", ASCII), ("IGNORECASE", IGNORECASE), ("LOCALE", LOCALE),
    ("UNICODE", UNICODE), ("MULTILINE", MULTILINE), ("DOTALL", DOTALL),
    ("VERBOSE", VERBOSE), ("DEBUG", DEBUG),
]

def _woof_lru_cache(maxsize):
    def decorate(f):
        cache = {}
        def cached(*args):
            try:
                value = cache.pop(args)
            except KeyError:
                value = f(*args)
                if len(cache) >= maxsize:
                    del cache[next(iter(cache))]
            cache[args] = value
            return value
        cached.cache_clear = cache.clear
        return cached
    return decorate

def _expand(pattern, match, template):
    # Match.expand() in this interpreter's _sre calls re._expand.
    items = _parser.parse_template(template, pattern)
    pieces = []
    for i, item in enumerate(items):
        if i % 2 == 0:
            pieces.append(item)
        else:
            group = match.group(item)
            if group is not None:
                pieces.append(group)
    return match.string[:0].join(pieces)
"#;

/// What `warnings` is inside `re` (its warnings are dropped), and the
/// `latin-1` codec that bytes patterns are parsed with (the interpreter
/// finds no codec but UTF-8 without the `encodings` package).
const SUPPORT: &str = r#"
class _Warnings:
    def warn(self, *args, **kwargs):
        pass

_woof_warnings = _Warnings()

def _latin_1(name):
    if name in ("latin1", "latin_1", "latin", "l1", "iso8859_1", "iso_8859_1"):
        return (_codecs.latin_1_encode, _codecs.latin_1_decode, None, None)
    return None

_codecs.register(_latin_1)
"#;

thread_local! {
    /// While `re` loads: what its own imports get, by (level, name); a
    /// relative import is level 1 with the name after the dot.
    pub(super) static LOADING: RefCell<HashMap<(i64, String), PyObjectRef>> =
        RefCell::new(HashMap::new());
}

/// A file of `re`, with its edits made.
fn source(file: &str) -> Result<String, String> {
    let (_, text) = LIB
        .iter()
        .find(|(name, _)| *name == file)
        .ok_or_else(|| format!("re has no file {file}"))?;
    let mut text = (*text).to_string();
    for (_, from, to) in EDITS.iter().filter(|(name, _, _)| *name == file) {
        if !text.contains(from) {
            return Err(format!(
                "re/{file}.py is not the one woof was written for: it lacks {:?}",
                from.lines().next().unwrap_or(from)
            ));
        }
        text = text.replace(from, to);
    }
    Ok(text)
}

/// Loads `re` and returns it.
pub(super) fn load(vm: &VirtualMachine) -> PyResult<PyObjectRef> {
    let loaded = load_inner(vm);
    LOADING.with(|l| l.borrow_mut().clear());
    loaded
}

fn load_inner(vm: &VirtualMachine) -> PyResult<PyObjectRef> {
    let import_error = |message: String| vm.new_import_error(message, vm.ctx.new_str("re"));
    let sre = rustpython_vm::import::import_builtin(vm, "_sre")?;
    let warnings = {
        let dict = vm.ctx.new_dict();
        let codecs = rustpython_vm::import::import_builtin(vm, "_codecs")?;
        dict.set_item("_codecs", codecs, vm)?;
        super::run_in(vm, "re._woof_support", SUPPORT, &dict)?;
        dict.get_item("_woof_warnings", vm)?
    };
    let package_dict = vm.ctx.new_dict();
    let package: PyObjectRef = vm.new_module("re", package_dict.clone(), None).into();
    LOADING.with(|l| {
        let mut l = l.borrow_mut();
        l.insert((0, "_sre".to_string()), sre);
        l.insert((0, "re".to_string()), package.clone());
        l.insert((1, String::new()), package.clone());
    });
    for (file, _) in LIB {
        let text = source(file).map_err(import_error)?;
        let dict = if file == "__init__" {
            package_dict.clone()
        } else {
            vm.ctx.new_dict()
        };
        dict.set_item("_woof_warnings", warnings.clone(), vm)?;
        dict.set_item("__package__", vm.ctx.new_str("re").into(), vm)?;
        if file == "__init__" {
            super::run_in(vm, "re", &text, &dict)?;
        } else {
            let name = format!("re.{file}");
            super::run_in(vm, &name, &text, &dict)?;
            let module: PyObjectRef = vm.new_module(&name, dict, None).into();
            package_dict.set_item(file, module.clone(), vm)?;
            LOADING.with(|l| l.borrow_mut().insert((1, file.to_string()), module));
        }
    }
    Ok(package)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_edit_applies() {
        for (file, _) in LIB {
            let text = source(file).unwrap();
            assert!(!text.contains("import warnings"), "{file}");
        }
        let init = source("__init__").unwrap();
        for gone in ["enum.", "functools.", "copyreg"] {
            assert!(!init.contains(gone), "{gone}");
        }
    }
}
