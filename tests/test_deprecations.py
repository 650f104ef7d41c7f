"""The deprecation screen (tests/deprecations.py): a deprecated API our code calls fails the test, a library's own
use of one does not. Code is compiled under file names of ours or of a library, so its frames are placed there."""

import sysconfig
import textwrap
import warnings

import pytest
from deprecations import ROOT, DeprecationScreen
from diffusers import DDPMScheduler

LIBRARY = sysconfig.get_paths()["purelib"]


def code_at(path, source: str) -> dict:
    """The functions `source` defines, their frames in file `path`."""
    namespace = {}
    exec(compile(textwrap.dedent(source), str(path), "exec"), namespace)
    return namespace


def config_attribute(path):
    """A function at `path` reading a scheduler's config by attribute, which diffusers deprecates."""
    return code_at(path, "def steps(scheduler):\n    return scheduler.num_train_timesteps\n")["steps"]


def test_a_deprecated_call_from_our_package_fails_the_test():
    steps = config_attribute(ROOT / "models" / "diffusion" / "example.py")
    # diffusers' deprecate names its own file as the warning's place; the screen still finds the caller
    with pytest.raises(FutureWarning, match=r"deprecated call at .*models/diffusion/example\.py:2"):
        steps(DDPMScheduler())


def test_a_deprecated_call_from_a_top_level_script_or_bench_fails_the_test():
    for path in (ROOT / "inference.py", ROOT / "bench" / "example.py"):
        with pytest.raises(FutureWarning, match="deprecated call at"):
            config_attribute(path)(DDPMScheduler())


def test_a_library_calling_a_deprecated_api_is_left_to_the_library():
    library_steps = config_attribute(f"{LIBRARY}/somelib/schedulers.py")
    ours = code_at(ROOT / "models" / "example.py", "def run(steps, scheduler):\n    return steps(scheduler)\n")["run"]
    assert ours(library_steps, DDPMScheduler()) == 1000  # ours -> somelib -> diffusers: somelib's to fix


def test_a_tests_own_deprecated_call_is_not_screened():
    assert config_attribute(ROOT / "tests" / "example.py")(DDPMScheduler()) == 1000


def test_the_screen_raises_only_for_our_calls_and_passes_other_warnings_on(tmp_path):
    ours, library = tmp_path / "ours", tmp_path / "site-packages"
    old = code_at(library / "oldlib" / "api.py", """
        import warnings
        def old():
            warnings.warn("old() is deprecated", DeprecationWarning, stacklevel=2)
        def complains():
            warnings.warn("this line is deprecated", DeprecationWarning, stacklevel=1)
        def noisy():
            warnings.warn("just so you know", UserWarning, stacklevel=2)
    """)  # fmt: skip
    other = code_at(library / "otherlib" / "use.py", "def use(f):\n    return f()\n")["use"]
    call = code_at(ours / "package" / "module.py", "def call(f, *args):\n    return f(*args)\n")["call"]
    screen = DeprecationScreen(ours=[ours], libraries=[library])
    with warnings.catch_warnings(record=True) as shown, screen:
        warnings.simplefilter("always")
        with pytest.raises(DeprecationWarning, match=r"old\(\) is deprecated \(deprecated call at .*module\.py:2"):
            call(old["old"])
        call(other, old["old"])  # otherlib's use of oldlib: dropped
        call(old["complains"])  # as C code warns, about the library's own line: dropped
        call(old["noisy"])
    assert [(w.category, str(w.message)) for w in shown] == [(UserWarning, "just so you know")]
