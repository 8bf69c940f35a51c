"""A trained detector as one ONNX (dynamo exporter, run by onnxruntime) or TorchScript (traced)
file, and that file run again: the BN-folded network with decoding and NMS inside, any batch size.
Its metadata (input, class names, post-processing, run config) is inside the file and in a JSON file
next to it, so that ``src/eval.py model_file=...`` can score it on the checkpoint's test split.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from dssd.errors import UserError, quiet_loggers
from dssd.ops import Agreement, GraphPostProcessor, PostProcessor, Tolerance, compare_with_network

if TYPE_CHECKING:
    from dssd.deployment.detector import Detector

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}  # file suffix of each format
INPUT_NAME = "images"
OUTPUT_NAMES = ("num_detections", "boxes", "scores", "labels")
METADATA_KEY = "dssd"  # the key in ONNX metadata_props, the file name in a TorchScript archive
JIT_DEPRECATION = r"`torch\.jit\.\w+` is deprecated"  # torch.jit's warning at every call

log = logging.getLogger(__name__)


class ExportableDetector(nn.Module):
    """The network and its post-processing as one module (:class:`~dssd.ops.GraphPostProcessor`):
    preprocessed ``images [B, 3, S, S]`` to ``num_detections [B]``, ``boxes [B, K, 4]`` (xyxy in
    [0, 1]), ``scores [B, K]`` and ``labels [B, K]`` (1..C), zero-padded after the count."""

    def __init__(self, net: nn.Module, post: PostProcessor) -> None:
        super().__init__()
        self.net = net
        self.postprocess = GraphPostProcessor(post)
        self.register_buffer("priors", net.priors.detach().clone())

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        loc, conf = self.net(images)
        return self.postprocess(loc, conf, self.priors)


def metadata(detector: Detector, fmt: str, checkpoint: str | Path | None) -> dict[str, Any]:
    """What a user of the exported file needs: its input and outputs, the class names, the
    post-processing baked in, and the run's config (to find the checkpoint's test data)."""
    post = detector.module.postprocess
    size = detector.image_size
    return {
        "format": fmt,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", 3, size, size],
            "dtype": "float32",
            "image_size": size,
            "mean": list(detector.mean),
            "std": list(detector.std),
            "preprocessing": (
                f"RGB, resized to {size}x{size} (bilinear), scaled to [0, 1], "
                "minus mean, divided by std, channels first"
            ),
        },
        "outputs": {
            "num_detections": "int64 [batch]: detections of each image",
            "boxes": "float32 [batch, K, 4]: xyxy, normalised to [0, 1] of the image",
            "scores": "float32 [batch, K]",
            "labels": "int64 [batch, K]: 1..C, index + 1 into class_names",
        },
        "class_names": list(detector.class_names),
        "postprocess": {
            "score_threshold": post.score_threshold,
            "top_k": post.top_k,
            "nms_iou": post.nms_iou,
            "max_detections": post.max_detections,
            "variances": list(post.box_coder.variances),
        },
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "run_config": OmegaConf.to_container(detector.run_config, resolve=True),
    }


def check_format(fmt: str) -> None:
    """A :class:`UserError` unless ``fmt`` is one of :data:`FORMATS`."""
    if fmt not in FORMATS:
        raise UserError(f"format={fmt}: choose one of {', '.join(FORMATS)}")


def export_detector(
    detector: Detector, fmt: str, output: str | Path, checkpoint: str | Path | None = None
) -> Path:
    """Write ``detector`` (BN-folded already) as ``fmt`` at ``output``, with its metadata (naming
    ``checkpoint``) inside and in ``<output>.json``; return the path."""
    module = ExportableDetector(detector.module.net, detector.module.postprocess)
    info = metadata(detector, fmt, checkpoint)
    path = export_module(module, fmt, output, detector.image_size, info)
    Path(f"{path}.json").write_text(json.dumps(info, indent=2) + "\n")
    return path


def export_module(
    module: ExportableDetector, fmt: str, output: str | Path, image_size: int, info: dict[str, Any]
) -> Path:
    """Write ``module`` (dynamic batch size) as ``fmt`` at ``output`` with ``info`` inside."""
    check_format(fmt)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    module = module.cpu().eval()
    # two images: a batch of one would let the exporter specialise the batch dimension to 1
    example = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    text = json.dumps(info)
    # the ONNX graph passes log every step at INFO, and warn of attribute types they default
    # themselves; torchvision's NMS registration warns of a torch API it calls; torch.jit warns
    # at each call that it is deprecated (said once, below), and the tracer that the number of
    # default boxes becomes a constant, which it is for a network
    with (
        torch.no_grad(),
        quiet_loggers("onnx_ir", "onnxscript", level=logging.ERROR),
        warnings.catch_warnings(),
    ):
        warnings.filterwarnings("ignore", "`create_unbacked_symint` is deprecated", FutureWarning)
        warnings.filterwarnings("ignore", JIT_DEPRECATION, FutureWarning)
        warnings.filterwarnings("ignore", "Converting a tensor to a", torch.jit.TracerWarning)
        if fmt == "onnx":
            program = torch.onnx.export(
                module,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
                verbose=False,
            )
            program.model.metadata_props[METADATA_KEY] = text
            program.save(str(output), external_data=False)
        else:
            log.warning("PyTorch deprecates TorchScript: format=onnx is the one to deploy")
            traced = torch.jit.trace(module, (example,), check_trace=False)
            torch.jit.save(traced, str(output), _extra_files={METADATA_KEY: text})
    return output


class ExportedModel:
    """An exported detector file run by onnxruntime (``.onnx``) or TorchScript (``.pt``):
    ``model(images)`` gives the padded outputs, :meth:`detect` per-image detections in pixels."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise UserError(f"model_file={path} is a directory: give an exported file in it")
        if not self.path.is_file():
            raise UserError(f"model_file={path}: no such file (write one with src/export.py)")
        formats = {suffix: fmt for fmt, suffix in FORMATS.items()}
        if self.path.suffix not in formats:
            raise UserError(
                f"model_file={path}: expected an .onnx or .pt file written by src/export.py"
            )
        self.format = formats[self.path.suffix]
        text = self._load_onnx(threads) if self.format == "onnx" else self._load_torchscript()
        if not text:
            raise UserError(
                f"model_file={self.path}: holds no {METADATA_KEY!r} metadata; "
                "export it with src/export.py"
            )
        try:  # a file edited by hand, or by another tool
            self.metadata: dict[str, Any] = json.loads(text)
            self.class_names: list[str] = list(self.metadata["class_names"])
            self.image_size: int = int(self.metadata["input"]["image_size"])
        except (ValueError, LookupError, TypeError) as err:
            raise UserError(
                f"model_file={self.path}: its {METADATA_KEY!r} metadata is damaged ({err!r}); "
                "export the checkpoint again with src/export.py"
            ) from None

    def _load_onnx(self, threads: int | None) -> str | None:
        """Open the onnxruntime session; return the metadata's text."""
        try:
            import onnxruntime
        except ImportError as err:
            raise UserError(
                "running an ONNX model needs onnxruntime: pip install -e '.[export]'"
            ) from err
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own exception types
            raise UserError(f"model_file={self.path}: not a readable ONNX model ({err})") from err
        return self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)

    def _load_torchscript(self) -> str | bytes:
        """Load the TorchScript module; return the metadata's text."""
        extra = {METADATA_KEY: ""}
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", JIT_DEPRECATION, FutureWarning)  # said at export
                self.module = torch.jit.load(str(self.path), map_location="cpu", _extra_files=extra)
        except RuntimeError as err:
            raise UserError(f"model_file={self.path}: not a TorchScript archive ({err})") from err
        return extra[METADATA_KEY]

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Padded outputs (:class:`ExportableDetector`) for a preprocessed batch."""
        if self.format == "onnx":
            outputs = self.session.run(
                list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(images.cpu().numpy())}
            )
            return tuple(torch.from_numpy(o) for o in outputs)  # type: ignore[return-value]
        with torch.no_grad():
            return self.module(images.cpu())

    def detect(self, images: Tensor, orig_sizes: Tensor) -> list[dict[str, Tensor]]:
        """Per-image detections: boxes in pixels of the original images (``orig_sizes [B, 2]``,
        height and width), scores and labels, sorted by decreasing score."""
        counts, boxes, scores, labels = self(images)
        scale = orig_sizes.cpu().flip(-1).repeat(1, 2).to(boxes)
        return [
            {"boxes": boxes[i, :n] * scale[i], "scores": scores[i, :n], "labels": labels[i, :n]}
            for i, n in enumerate(counts.tolist())
        ]


def agreement_with(
    detector: Detector, exported: ExportedModel, batch_size: int, tolerance: Tolerance
) -> Agreement:
    """How the exported file's detections agree, as sets, with the detector's own on
    ``batch_size`` seeded noise images of the network's size."""
    size = detector.image_size
    generator = torch.Generator().manual_seed(batch_size)
    images = torch.randn(batch_size, 3, size, size, generator=generator)
    orig_sizes = torch.tensor([[size, size]] * batch_size)
    net, post = detector.module.cpu().net, detector.module.postprocess
    found = exported.detect(images, orig_sizes)
    return compare_with_network(net, post, images, orig_sizes, found, tolerance)
