"""Device models by name. Add a preset by writing a module with a class that implements
:class:`chipsim.devices.base.DeviceModel` and registering it in ``DEVICES``."""

from __future__ import annotations

from chipsim.devices.base import DeviceModel
from chipsim.devices.pcm import PCMDevice
from chipsim.devices.reram import ReRAMDevice

DEVICES: dict[str, type] = {"pcm": PCMDevice, "reram": ReRAMDevice}


def get_device(name: str) -> DeviceModel:
    """A device model by preset name; ``KeyError`` lists the known ones."""
    try:
        return DEVICES[name]()
    except KeyError:
        raise KeyError(f"unknown device {name!r}; known devices: {sorted(DEVICES)}") from None


__all__ = ["DEVICES", "DeviceModel", "PCMDevice", "ReRAMDevice", "get_device"]
