"""What a camera that turns on the spot already knows of its next view: the view it had, turned.

Turning about the camera's vertical axis moves every pixel by the homography K R K^-1, whatever the depth
of what it shows (K: the camera's intrinsics, from its vertical field of view; R: the turn). So a view
seen at a place stands for part of every view at that place facing up to a field of view away: warped by
the heading difference, it is exact where it covers the frame, and the rest came into view.

That holds for a camera turning about its own centre. Memory Maze's egocentric camera sits 0.15 world
units ahead of the axis its walker turns about, so a turn also moves it a little, and near walls shift by
parallax: the further the turn, the less exact the turned view (`benchmarks/maze_turn_warp.py` measures how
much of a turn turned views cover and how well; the figures are in the Memory Maze model card).

The pose memory (`pose_memory.py`) brings such turned views back while a chunk is sampled, as it brings
back exact ones.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def rotation_homography(fovy_degrees: float, height: int, width: int, yaw_degrees: float) -> np.ndarray:
    """The pixel map (3 x 3, OpenCV's convention) of a pinhole camera with square pixels and a vertical field
    of view of `fovy_degrees` turned on the spot by `yaw_degrees` (positive: to the right)."""
    focal = height / 2 / math.tan(math.radians(fovy_degrees) / 2)
    intrinsics = np.array([[focal, 0, (width - 1) / 2], [0, focal, (height - 1) / 2], [0, 0, 1]])
    a = math.radians(yaw_degrees)
    rotation = np.array([[math.cos(a), 0, -math.sin(a)], [0, 1, 0], [math.sin(a), 0, math.cos(a)]])
    return intrinsics @ rotation @ np.linalg.inv(intrinsics)


def horizontal_fov(fovy_degrees: float, height: int, width: int) -> float:
    """The horizontal field of view, in degrees, of the camera of `rotation_homography`."""
    return math.degrees(2 * math.atan(math.tan(math.radians(fovy_degrees) / 2) * width / height))


def turned_view(frame: np.ndarray, fovy_degrees: float, yaw_degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """`frame` (H, W, C float) as the camera sees it after turning `yaw_degrees` to the right on the spot:
    (the warped frame, (H, W) bool of the pixels it truly shows). Pixels that came into view are filled
    with the nearest edge of the old view, which the known mask leaves out (the fill only keeps an image
    encoder from seeing a hard edge)."""
    height, width = frame.shape[:2]
    if abs(yaw_degrees) >= min(90.0, horizontal_fov(fovy_degrees, height, width)):
        # Nothing of the old view is left (and past a quarter turn the map would show what is behind).
        return np.array(frame, np.float32), np.zeros((height, width), bool)
    homography = rotation_homography(fovy_degrees, height, width, yaw_degrees)
    warped = cv2.warpPerspective(np.ascontiguousarray(frame, np.float32), homography, (width, height),
                                 flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    coverage = cv2.warpPerspective(np.ones((height, width), np.float32), homography, (width, height),
                                   flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if warped.ndim == 2:
        warped = warped[..., None]
    return warped, coverage > 0.999
