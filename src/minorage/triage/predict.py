"""Ages for the files a user names: `minorage predict`.

The sources are walked as evidence (`minorage.sources`: links recorded with their targets, a
folder that cannot be listed reported), each image or video opened read-only (`minorage.io`),
its faces found (or, with `crops`, the image taken as one face crop), each face framed the way
the model's card says, and the faces sent to the network in batches. A video is looked at one
frame every `video_every` seconds, each face's row giving its frame's time. A file that cannot
be read becomes a row with its `status` and `error`, an image or video without a face a row that
says so; rows come out in the order of the walk.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from minorage.config import InferenceConfig
from minorage.evidence.io import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    ImageReadError,
    Opened,
    decode_image,
    media_of,
    open_evidence,
    read_capped,
    video_frames,
    write_image,
)
from minorage.evidence.paths import display_path, inside
from minorage.evidence.sources import Entry, named_or_suffixed, real_sources, walk
from minorage.faces.detection import FaceDetector
from minorage.faces.occlusion import eyes_occluded
from minorage.model.estimator import AgeEstimator
from minorage.threads import in_order
from minorage.triage.pipeline import FramedFace, Reading, ages_by_item, find_faces, frame_crop, opinions_by_item

VERDICT_COLUMNS = ("age", "group", "minor", "minor_below", "p_minor", "age_low", "age_high")
CROP_COLUMNS = ("path", *VERDICT_COLUMNS, "eyes_occluded", "framing", "box", "status", "error")
FACE_COLUMNS = ("path", "frame_time", "face", *VERDICT_COLUMNS, "eyes_occluded", "score", "box", "eyes", "status", "error", "annotated")
OPINION_COLUMNS = ("second_opinion_age", "flag_lifted")  # a model with a second opinion adds these


def columns(crops: bool, estimator: AgeEstimator) -> tuple[str, ...]:
    """The CSV columns of `predict`'s rows for the mode and the model."""
    return (CROP_COLUMNS if crops else FACE_COLUMNS) + (OPINION_COLUMNS if estimator.opinion else ())


@dataclass(frozen=True)
class PredictOptions:
    """What `predict` does with each image."""

    crops: bool = False  # each image is one face crop: its main face, or the whole image where none is found
    face_fraction: float = InferenceConfig.face_fraction
    batch_size: int = InferenceConfig.batch_size
    max_pixels: int = InferenceConfig.max_pixels
    max_bytes: int = InferenceConfig.max_bytes
    annotate_dir: Path | None = None  # write copies with boxes and ages drawn here (images)
    video_every: float = InferenceConfig.video_every
    max_video_frames: int = InferenceConfig.max_video_frames
    follow_links: bool = False  # read what links outside the sources point to
    minor_above: float | None = None  # flag by p_minor above this instead of the age threshold
    threads: int = InferenceConfig.threads  # files read and searched for faces at once; 0 = one per CPU core

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise ValueError(f"--threads must be 0 (one per CPU core) or more, got {self.threads}")


@dataclass
class _Image:
    """One file on its way through the batch: its faces and their framed crops, or its error."""

    path: str
    relative: str
    error: ImageReadError | None = None
    framed: list[FramedFace] = field(default_factory=list)  # per face: the model's input and its route
    frame_times: list[float | None] = field(default_factory=list)  # per face: its video frame's time
    barred: list[bool] = field(default_factory=list)  # per face: its eyes under a black bar
    framing: str | None = None  # with crops: "detected" (the face found in the crop) or "whole_image"
    image: np.ndarray | None = None  # kept only to annotate
    annotated: str | None = None


def _face_row(item: _Image, index: int | None, framed: FramedFace, frame_time: float | None, barred: bool, age: float,
              opinion: float, reading: Reading) -> dict:
    face = framed.face
    row = {"path": display_path(item.path), "age": float(age), **reading.verdict(age, barred, framed.edge_filled, opinion),
           "eyes_occluded": barred, "status": "ok"}
    if reading.minor_above is None:  # the age the flag was read at: the model's own per part and kind of face (raised
        row.setdefault("minor_below", reading.flag_below(barred, framed.edge_filled))  # by a second opinion that read it)
    if frame_time is not None:
        row["frame_time"] = frame_time
    if face is not None:
        info = face.to_dict()
        if index is not None:
            row["face"] = index
        row.update({"score": info["score"], "box": info["box"], "eyes": info["eyes"]})
    if item.framing:
        row["framing"] = item.framing
    if item.annotated:
        row["annotated"] = item.annotated
    return row


def _rows(item: _Image, ages: np.ndarray, opinions: np.ndarray, crops_mode: bool, reading: Reading) -> list[dict]:
    if item.error is not None:
        return [{"path": display_path(item.path), "status": item.error.status, "error": str(item.error)}]
    if not item.framed:
        return [{"path": display_path(item.path), "face": None, "status": "no_face", "error": "no face found"}]
    return [
        _face_row(item, None if crops_mode else i, framed, frame_time, barred, float(age), float(opinion), reading)
        for i, (framed, frame_time, barred, age, opinion) in enumerate(zip(item.framed, item.frame_times, item.barred, ages, opinions))
    ]


def annotate(image: np.ndarray, faces: list[FramedFace], ages: list[float], barred: list[bool], reading: Reading,
             opinions: list[float] | None = None) -> np.ndarray:
    """A copy with each face's box and estimated age drawn (like the paper's Figure 4), red where flagged."""
    out = image.copy()
    thickness = max(1, round(max(image.shape[:2]) / 400))
    for framed, age, eyes_barred, opinion in zip(faces, ages, barred, opinions or [np.nan] * len(faces)):
        face = framed.face
        x1, y1, x2, y2 = (int(round(v)) for v in face.box)
        colour = (0, 0, 255) if reading.verdict(age, eyes_barred, framed.edge_filled, opinion)["minor"] else (0, 200, 0)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness)
        label = reading.shown(age, framed.edge_filled)
        scale = max(0.4, face.width / 160)
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        top = max(y1, th + 4)
        cv2.rectangle(out, (x1, top - th - 4), (x1 + tw + 4, top), colour, -1)
        cv2.putText(out, label, (x1 + 2, top - 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return out


def check_outputs(sources: Iterable[str | os.PathLike], outputs: Iterable[str | os.PathLike | None]) -> list[str]:
    """The sources' real paths; refuses (ValueError) an output that would be written inside one."""
    roots = real_sources(sources)
    for output in outputs:
        if output is not None and (root := inside(os.path.realpath(output), roots)):
            raise ValueError(f"{display_path(output)} lies inside the source {display_path(root)}: evidence is never written to; "
                             "write outputs elsewhere")
    return roots


class Predictor:
    """Runs `predict` over files: reading, detection, framing and batched age estimation."""

    def __init__(self, estimator: AgeEstimator, detector: FaceDetector, options: PredictOptions):
        self.estimator, self.detector, self.options = estimator, detector, options
        self.reading = Reading.of(estimator, options.minor_above)  # how every age is read out: group, flag, p_minor, "25+"
        self.suffixes = IMAGE_SUFFIXES if options.crops else IMAGE_SUFFIXES | VIDEO_SUFFIXES

    def load(self, path: str, relative: str) -> _Image:
        """Read one file and cut out its faces; errors are kept, not raised."""
        item = _Image(path, relative)
        try:
            with open_evidence(path) as opened:
                for frame_time, image in self._frames(opened, path):
                    self._add_faces(item, image, frame_time)
        except ImageReadError as exc:
            return _Image(path, relative, error=exc)
        except OSError as exc:
            return _Image(path, relative, error=ImageReadError("unreadable", f"{display_path(path)}: {exc.strerror or exc}"))
        return item

    def _frames(self, opened: Opened, path: str) -> Iterator[tuple[float | None, np.ndarray]]:
        """The image, or a video's sampled frames one at a time (a long video never sits in memory)."""
        name = display_path(path)
        head = opened.file.read(16)
        opened.file.seek(0)
        if not self.options.crops and media_of(path, head) == "video":
            yield from video_frames(opened.file, name, self.options.video_every, self.options.max_video_frames, self.options.max_pixels)
        else:
            yield None, decode_image(read_capped(opened, self.options.max_bytes, name), self.options.max_pixels, name)

    def _add_faces(self, item: _Image, image: np.ndarray, frame_time: float | None) -> None:
        """One image's (or frame's) faces, framed for the model, appended to the file's."""
        if self.options.crops:
            found, item.framing = frame_crop(image, self.detector, self.estimator.framings, self.options.face_fraction)
            framed = [found]
        else:
            framed = find_faces(image, self.detector, self.estimator.framings)
        item.framed += framed
        item.barred += [f.face is not None and eyes_occluded(image, f.face) for f in framed]
        item.frame_times += [frame_time] * len(framed)
        if self.options.annotate_dir is not None and not self.options.crops and frame_time is None:
            item.image = image

    def finish(self, batch: list[_Image]) -> Iterator[dict]:
        """Estimate the ages of a batch of images' faces and turn them into rows."""
        framed = [item.framed for item in batch]
        for item, mine, opinions in zip(batch, ages_by_item(framed, self.estimator), opinions_by_item(framed, self.estimator)):
            mine = self.estimator.blended(mine, item.barred, opinions)
            if item.image is not None and item.framed:
                self.write_annotation(item, [float(a) for a in mine], [float(o) for o in opinions])
            yield from _rows(item, mine, opinions, self.options.crops, self.reading)

    def write_annotation(self, item: _Image, ages: list[float], opinions: list[float]) -> None:
        """A copy with boxes and ages under the file's relative path; never over an existing file."""
        drawn = annotate(item.image, item.framed, ages, item.barred, self.reading, opinions)
        item.annotated = display_path(write_image(self.options.annotate_dir / item.relative, drawn))

    def wanted(self, entry: Entry, roots: list[str]) -> bool:
        """Files named directly, and files with an image (or video) name under folders; links
        with such a name or to a folder, and folders that cannot be listed, for their rows."""
        if entry.kind == "folder":
            return entry.status == "unreadable"
        if entry.kind == "link":
            return os.path.splitext(entry.path)[1].lower() in self.suffixes or os.path.isdir(entry.path)
        return named_or_suffixed(entry, roots, self.suffixes)

    def run(self, paths: Iterable[str | Path], progress: bool = True) -> Iterator[dict]:
        roots = check_outputs(paths, [self.options.annotate_dir])
        entries = [e for e in walk(roots, self.options.follow_links) if self.wanted(e, roots)]
        batch: list[_Image] = []
        pending_faces = 0
        for entry, item in tqdm(self.loaded(entries), total=len(entries), desc="predict", unit="file", disable=not progress, leave=False):
            if item is None:  # a link or a folder: the walk's verdict is the row
                yield from self.finish(batch)
                batch, pending_faces = [], 0
                yield {"path": display_path(entry.path), "status": entry.status, "error": entry.error}
                continue
            batch.append(item)
            pending_faces += len(item.framed)
            if pending_faces >= self.options.batch_size:
                yield from self.finish(batch)
                batch, pending_faces = [], 0
        yield from self.finish(batch)

    def loaded(self, entries: list[Entry]) -> Iterator[tuple[Entry, _Image | None]]:
        """Each entry with its file read and its faces found (None for a walk's own verdict), in
        order, `threads` files at a time (`minorage.threads`): two threads detect about twice as
        fast as one on two cores."""
        def load(entry: Entry) -> tuple[Entry, _Image | None]:
            return entry, self.load(entry.path, entry.relative) if entry.status is None else None

        return in_order(load, entries, self.options.threads)
