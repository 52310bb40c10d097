"""The device registry, the device contract (devices.conformance) over every registered device, and callers that
ask a device's capabilities instead of its name."""

import time

import pytest
import torch
from torch import nn

import compress
import devices
from compress.deploy.timing import ReferenceTimer, can_measure, measure_module
from compress.search.objectives import PredictorUnavailableError, fit_latency_predictor
from devices import Capabilities, Measurement, conformance


# ---- the contract, over every registered device --------------------------------------------------------------
@pytest.mark.parametrize("name", devices.list_devices())
def test_every_registered_device_keeps_the_contract(name, tmp_path):
    assert conformance.check_device(devices.get_device(name), tmp_path) == [c.__name__ for c in conformance.CHECKS]


def test_the_builtin_devices_declare_what_they_do():
    cpu, torch_cpu, board = (devices.get_device(n) for n in ("cpu", "torch-cpu", "board"))
    assert cpu.capabilities == Capabilities(accepts=("onnx",), measurable_here=True, profilable_here=True)
    assert torch_cpu.capabilities == Capabilities(accepts=("module",), measurable_here=True, profilable_here=False)
    assert board.capabilities == Capabilities(accepts=("onnx",), measurable_here=False, profilable_here=False)
    assert devices.get_device("ort-cpu").capabilities == cpu.capabilities
    assert devices.capabilities_of(object()) is devices.NO_CAPABILITIES
    with pytest.raises(compress.InvalidParameterError, match="'accepts' parameter of Capabilities"):
        Capabilities(accepts=("tflite",), measurable_here=True)
    with pytest.raises(compress.InvalidParameterError, match="'profilable_here' parameter"):
        Capabilities(accepts=("module",), measurable_here=True, profilable_here=True)


def test_devices_raise_named_errors(tmp_path):
    onnx, shapes, bad = conformance.tiny_model("onnx", tmp_path)
    cpu = devices.get_device("cpu")
    with pytest.raises(devices.ModelNotFoundError, match="no ONNX file at .*missing.onnx"):
        cpu.measure(tmp_path / "missing.onnx", shapes)
    with pytest.raises(FileNotFoundError):  # still the built-in it refines
        cpu.profile(tmp_path / "missing.onnx", shapes)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(devices.ModelFileError, match="cannot load .*junk.onnx"):
        cpu.measure(tmp_path / "junk.onnx", shapes)
    with pytest.raises(devices.InputShapeError, match=r"input 'input' of the model has shape \[None, 3, 16, 16\]"):
        cpu.measure(onnx, bad)
    with pytest.raises(devices.InputShapeError, match="has no input 'image'"):
        cpu.measure_interleaved([onnx], {"image": [1, 3, 16, 16]})
    module, x, bad_x = conformance.tiny_model("module", tmp_path)
    with pytest.raises(compress.InvalidParameterError, match="'model' parameter of OrtCpuDevice.measure"):
        cpu.measure(module, shapes)
    torch_cpu = devices.get_device("torch-cpu")
    threads, training = torch.get_num_threads(), module.train().training
    with pytest.raises(devices.InputShapeError, match=r"shapes? \[\(1, 5, 16, 16\)\]"):
        torch_cpu.measure(module, bad_x)
    assert torch.get_num_threads() == threads and module.training == training  # restored after the error
    with pytest.raises(compress.InvalidParameterError, match="'model' parameter of TorchCpuDevice.measure"):
        torch_cpu.measure(onnx, x)


def test_a_board_fingerprint_is_its_tables(tmp_path):
    assert devices.get_device("board", threads=4).fingerprint() == {"device": "board", "runtime": "onnxruntime",
                                                                      "threads": 4}
    (tmp_path / "board.json").write_text('{"fingerprint": {"cpu": "Cortex-A72", "threads": 4}}')
    assert devices.get_device("board", table=tmp_path / "board.json").fingerprint() == {"cpu": "Cortex-A72",
                                                                                         "threads": 4}
    with pytest.raises(devices.DeviceUnavailableError, match="cannot be read"):
        devices.get_device("board", table=tmp_path / "none.json").fingerprint()


# ---- the suite fails devices that break the contract ----------------------------------------------------------
class ClaimsToMeasure(devices.BoardDevice):
    capabilities = Capabilities(accepts=("onnx",), measurable_here=True)


class SaysItCannotButDoes(devices.TorchCpuDevice):
    capabilities = Capabilities(accepts=("module",), measurable_here=False)


class UnorderedQuartiles(devices.TorchCpuDevice):
    def measure(self, model, example_inputs, **protocol):
        m = super().measure(model, example_inputs, **protocol)
        return Measurement(m.median_ms, m.median_ms * 2, m.median_ms * 3, m.runs, m.samples_ms, m.fingerprint)


class DriftingFingerprint(devices.TorchCpuDevice):
    def fingerprint(self):
        return dict(super().fingerprint(), at=time.perf_counter())


class UnJsonableFingerprint(devices.TorchCpuDevice):
    def fingerprint(self):
        return dict(super().fingerprint(), flags={"avx2"})


class RawErrors(devices.OrtCpuDevice):
    def measure(self, model, input_shapes=None, **protocol):
        with open(model, "rb"):  # a raw FileNotFoundError for a missing file
            return super().measure(model, input_shapes, **protocol)


class NoMeasurement(devices.TorchCpuDevice):
    def measure_interleaved(self, models, example_inputs, **protocol):
        return [m.median_ms for m in super().measure_interleaved(models, example_inputs, **protocol)]


@pytest.mark.parametrize("device, promise", [
    (ClaimsToMeasure(), r"measure\(onnx model\) must work; it raised DeviceUnavailableError"),
    (SaysItCannotButDoes(), "measurable_here=False promises that measure.. raises DeviceUnavailableError"),
    (UnorderedQuartiles(), "p25 <= median <= p75"),
    (DriftingFingerprint(), "stable between calls"),
    (UnJsonableFingerprint(), "JSON round trip"),
    (RawErrors(), "must raise ModelNotFoundError; it raised FileNotFoundError"),
    (NoMeasurement(), "must return a devices.Measurement; got float"),
])
def test_the_suite_fails_a_device_that_breaks_a_promise(device, promise, tmp_path):
    with pytest.raises(AssertionError, match=promise):
        conformance.check_device(device, tmp_path)


# ---- the registry ----------------------------------------------------------------------------------------------
def test_registry_names_aliases_and_options():
    assert {"cpu", "ort-cpu", "torch-cpu", "board"} <= set(devices.list_devices())
    assert {"cpu", "torch-cpu", "board"} <= set(devices.list_devices(include_aliases=False))
    assert "ort-cpu" not in devices.list_devices(include_aliases=False)
    assert devices.device_entry("ort-cpu") is devices.device_entry("cpu")
    assert devices.device_options("cpu") == ("opt_level", "threads")
    with pytest.raises(devices.UnknownDeviceOptionError,
                       match=r"Device 'cpu' takes no option\(s\) 'thread'. It takes: opt_level, threads. "
                             r"Did you mean 'threads' for 'thread'\?"):
        devices.get_device("cpu", thread=1)
    with pytest.raises(TypeError):  # what the bare factory raised before: callers catching it still do
        devices.get_device("torch-cpu", opt_level="all")
    with pytest.raises(compress.InvalidParameterError, match=r"'name' parameter of get_device .* Got \['cpu'\]"):
        devices.get_device(["cpu"])
    with pytest.raises(devices.UnknownDeviceError, match="Unknown device 'gpu'.*register_device"):
        devices.get_device("gpu")


class MyDevice(devices.TorchCpuDevice):
    """A device of one's own: the torch CPU device under another name."""

    name = "mine"


def test_register_get_and_unregister_a_device_of_ones_own(tmp_path):
    entry = devices.register_device("mine", MyDevice, aliases=("my-alias",))
    try:
        assert entry.options == ("threads",) and devices.list_devices().count("mine") == 1
        dev = devices.get_device("my-alias", threads=2)
        assert isinstance(dev, MyDevice) and dev.threads == 2
        conformance.check_device(dev, tmp_path)
        with pytest.raises(devices.DuplicateDeviceError, match=r"\['mine'\] are registered already"):
            devices.register_device("mine", MyDevice)
        with pytest.raises(devices.DuplicateDeviceError, match=r"\['cpu'\]"):
            devices.register_device("other", MyDevice, aliases=("cpu",))
        assert "other" not in devices.list_devices()  # a refused registration leaves nothing behind
    finally:
        devices.unregister_device("mine")
    assert "mine" not in devices.list_devices() and "my-alias" not in devices.list_devices()
    with pytest.raises(devices.UnknownDeviceError):
        devices.get_device("mine")
    with pytest.raises(compress.InvalidParameterError, match="'factory' parameter of register_device"):
        devices.register_device("x", "not callable")


def test_a_factory_taking_any_options_gets_them():
    devices.register_device("anything", lambda **kw: kw)
    try:
        assert devices.device_options("anything") is None
        assert devices.get_device("anything", threads=3, host="b") == {"threads": 3, "host": "b"}
    finally:
        devices.unregister_device("anything")


# ---- callers ask capabilities, not names -----------------------------------------------------------------------
class Recorder:
    """A device that records what it is handed, with whatever name and capabilities a test gives it."""

    def __init__(self, name: str, capabilities: Capabilities) -> None:
        self.name, self.capabilities, self.seen = name, capabilities, []

    def fingerprint(self) -> dict:
        return {"device": "recorder"}

    def reading(self) -> Measurement:
        return Measurement(1.0, 1.0, 1.0, 4, [1.0] * 4, self.fingerprint(), burst=2)

    def measure(self, model, inputs=None, **protocol):
        self.seen.append(type(model).__name__)
        return self.reading()

    def measure_interleaved(self, models, inputs=None, **protocol):
        self.seen.extend(type(m).__name__ for m in models)
        return [self.reading() for _ in models]


def test_timing_dispatches_on_capabilities_not_names():
    x = (torch.zeros(1, 3, 16, 16),)
    module = conformance.tiny_module()
    takes_modules = Recorder("cpu", Capabilities(accepts=("module",), measurable_here=True))
    takes_onnx = Recorder("torch-cpu", Capabilities(accepts=("onnx", "module"), measurable_here=True))
    assert measure_module(takes_modules, module, x).median_ms == 1.0 and takes_modules.seen == ["Sequential"]
    measure_module(takes_onnx, module, x)
    assert takes_onnx.seen == ["PosixPath"]  # exported to ONNX, named "torch-cpu" or not
    timer = ReferenceTimer(takes_onnx, module, x, reference_ms=10.0)
    try:
        assert timer(module).median_ms == 10.0 and takes_onnx.seen[1:] == ["PosixPath", "PosixPath"]
    finally:
        timer.close()
    assert can_measure(takes_modules)
    assert can_measure(Recorder("board", Capabilities(accepts=("onnx",), measurable_here=True)))
    assert not can_measure(Recorder("cpu", Capabilities(accepts=("onnx",), measurable_here=False)))

    class NamedCpu:  # the name of a measurable device, and no capabilities
        name = "cpu"

    assert not can_measure(NamedCpu())


def test_a_latency_predictor_is_fitted_only_on_devices_profilable_here(tmp_path):
    class NamedCpuWithProfile:  # what the old name check let through
        name, threads = "cpu", 1

        def profile(self, *args, **kwargs):
            raise AssertionError("not to be called")

    for dev in (NamedCpuWithProfile(), devices.get_device("board"), devices.get_device("torch-cpu")):
        with pytest.raises(PredictorUnavailableError, match="cannot be profiled from here"):
            fit_latency_predictor(None, dev, "model", tmp_path)
