"""Per-device broker credentials through Mosquitto's dynamic security plugin.

`DynsecCredentials` is the `DeviceCredentials` the device service uses when
`IOTMETER_MQTT_ADMIN_URL` names the plugin's admin user: `provision(device_id)` creates the
device's broker client (username and client id = the device id, a fresh random password) and
a role that lets it publish only its own five device -> server topics and receive only its
own commands and firmware offers; `revoke(device_id)` deletes both, and the plugin
disconnects the device at once. The service roles (collector, dispatcher, operator) and their
clients are made with `setup()` and `add_service_client()` (`iotmeter broker ...`).

Commands go as JSON to `$CONTROL/dynamic-security/v1`; the answers come back on its
`/response` topic. This is a low-rate admin path, so one paho connection and one batch at a
time is plenty.
"""

from __future__ import annotations

import json
import secrets
import threading
from typing import Any, Final

import paho.mqtt.client as mqtt

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.config import Settings
from iotmeter_tui.backend.errors import IotmeterError
from iotmeter_tui.backend.mqtt.address import BrokerAddress
from iotmeter_tui.backend.mqtt.paho_session import make_client

CONTROL_TOPIC: Final = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC: Final = CONTROL_TOPIC + "/response"
TIMEOUT_S: Final = 5.0
PASSWORD_BYTES: Final = 24  # 192 random bits: the plugin's fast hash needs no more

# Topics per role, as (acltype, topic). What a device may send and receive is docs/protocol.md.
_DEVICE_SENDS: Final = ("telemetry", "hello", "status", "command/ack", "ota/status")
_DEVICE_RECEIVES: Final = ("command", "ota")


def _allow(acltype: str, topic: str) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "priority": 0, "allow": True}


def _reads(topics: list[str]) -> list[dict[str, Any]]:
    # The plugin checks a shared subscription's whole filter, $share/<group>/... included;
    # what is delivered is checked against the message's own topic.
    return ([_allow("subscribePattern", t) for t in topics]
            + [_allow("subscribePattern", f"$share/+/{t}") for t in topics]
            + [_allow("publishClientReceive", t) for t in topics])


SERVICE_ROLES: Final[dict[str, list[dict[str, Any]]]] = {
    # The collector's intake: reads what devices send.
    "collector": _reads([f"iot/+/{suffix}" for suffix in _DEVICE_SENDS]),
    # The collector's dispatcher, and the operator's tools (dashboard, CLI, API): send
    # commands and firmware offers, read nothing.
    "dispatcher": [_allow("publishClientSend", f"iot/+/{s}") for s in _DEVICE_RECEIVES],
    "operator": [_allow("publishClientSend", f"iot/+/{s}") for s in _DEVICE_RECEIVES],
}


def device_role(device_id: str) -> str:
    return f"device-{device_id}"


def device_acls(device_id: str) -> list[dict[str, Any]]:
    """A device's own topics only: literal names, so no wildcard reaches another device."""
    sends = [_allow("publishClientSend", f"iot/{device_id}/{s}") for s in _DEVICE_SENDS]
    receives = [f"iot/{device_id}/{s}" for s in _DEVICE_RECEIVES]
    return (sends + [_allow("subscribeLiteral", t) for t in receives]
            + [_allow("publishClientReceive", t) for t in receives])


class BrokerAdminError(IotmeterError):
    """The broker's dynamic security plugin could not be reached or refused a command."""


class DynsecAdmin:
    """The plugin's admin user. `run(commands)` connects, sends the batch, collects each
    command's error (None: done) and disconnects: the broker makes the user the client id,
    so a connection held open would be taken over by the next admin (another operator's
    CLI, the API) and fight it for the session."""

    def __init__(self, admin_url: str, *, timeout_s: float = TIMEOUT_S) -> None:
        self.address = BrokerAddress.parse(admin_url)
        self.timeout_s = timeout_s
        self._lock = threading.Lock()

    @property
    def _where(self) -> str:
        return f"{self.address.host}:{self.address.port}"

    def run(self, commands: list[dict[str, Any]]) -> list[str | None]:
        with self._lock:
            session = _AdminSession(self.address, self.timeout_s)
            try:
                session.open()
                return session.run(commands)
            except BrokerAdminError as exc:
                raise BrokerAdminError(f"broker admin at {self._where}: {exc}") from None
            finally:
                session.close()

    def close(self) -> None:
        """Nothing held between batches; kept so callers can release it all the same."""


class _AdminSession:
    """One admin connection: subscribed to the plugin's responses, then one batch."""

    def __init__(self, address: BrokerAddress, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.address = address
        self._answered = threading.Event()  # a CONNACK came, accepted or not
        self._subscribed = threading.Event()
        self._replies: dict[str, dict[str, Any]] = {}
        self._replied = threading.Condition()
        self._refused: str | None = None
        self._client = make_client(address, f"iotmeter-admin-{secrets.token_hex(4)}",
                                   persistent=False)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_args: self._subscribed.set()
        self._client.on_message = self._on_message

    def open(self) -> None:
        self._client.connect_async(self.address.host, self.address.port, 30)
        self._client.loop_start()
        self._answered.wait(self.timeout_s)
        if self._refused is not None or not self._subscribed.wait(self.timeout_s):
            raise BrokerAdminError(f"cannot connect ({self._refused or 'no answer'})")

    def run(self, commands: list[dict[str, Any]]) -> list[str | None]:
        token = secrets.token_hex(8)
        for number, command in enumerate(commands):
            command["correlationData"] = f"{token}-{number}"
        info = self._client.publish(CONTROL_TOPIC, json.dumps({"commands": commands}), qos=1)
        try:
            info.wait_for_publish(self.timeout_s)
        except (RuntimeError, ValueError) as exc:
            raise BrokerAdminError(str(exc)) from None
        wanted = {c["correlationData"] for c in commands}
        with self._replied:
            if not self._replied.wait_for(lambda: wanted <= self._replies.keys(),
                                          self.timeout_s):
                raise BrokerAdminError("no answer from the dynamic security plugin (is it "
                                       "loaded, and is this its admin user?)")
            return [self._replies[c["correlationData"]].get("error") for c in commands]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    # --- paho callbacks (network thread) ----------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _userdata: object, _flags: object,
                    reason: mqtt.ReasonCode, _props: object) -> None:
        if reason.is_failure:
            self._refused = f"refused: {reason}"
            client.disconnect()  # paho would retry with the same credentials
        else:
            client.subscribe(RESPONSE_TOPIC, qos=1)
        self._answered.set()

    def _on_message(self, _client: mqtt.Client, _userdata: object,
                    message: mqtt.MQTTMessage) -> None:
        try:
            responses = json.loads(message.payload)["responses"]
        except (ValueError, KeyError, TypeError):
            return
        with self._replied:
            for response in responses if isinstance(responses, list) else []:
                if isinstance(response, dict) and isinstance(response.get("correlationData"),
                                                             str):
                    self._replies[response["correlationData"]] = response
            self._replied.notify_all()


def _check(command: str, error: str | None, tolerated: tuple[str, ...] = ()) -> None:
    if error is not None and not any(t in error for t in tolerated):
        raise BrokerAdminError(f"broker admin: {command} failed: {error}")


class DynsecCredentials:
    """Broker identities through the dynamic security plugin (structurally the device
    service's `DeviceCredentials`)."""

    def __init__(self, admin: DynsecAdmin) -> None:
        self.admin = admin

    @classmethod
    def from_url(cls, admin_url: str) -> DynsecCredentials:
        return cls(DynsecAdmin(admin_url))

    def provision(self, device_id: str) -> str:
        """Create the device's client and role, return its new password (shown once). A
        device that has a client already gets a new one: the old password stops working and
        its connection is closed."""
        if not protocol.is_valid_device_id(device_id):
            raise BrokerAdminError(f"{device_id!r} is not a device id")
        password = secrets.token_urlsafe(PASSWORD_BYTES)
        role = device_role(device_id)
        errors = self.admin.run([
            {"command": "deleteClient", "username": device_id},
            {"command": "createRole", "rolename": role, "acls": device_acls(device_id)},
            {"command": "createClient", "username": device_id, "clientid": device_id,
             "password": password, "roles": [{"rolename": role}],
             "textname": f"iotmeter device {device_id}"},
        ])
        _check("deleteClient", errors[0], ("not found",))
        _check("createRole", errors[1], ("already exists",))
        _check("createClient", errors[2])
        return password

    def revoke(self, device_id: str) -> None:
        """Delete the device's client (the plugin disconnects it) and its role. Revoking a
        device that has none is not an error."""
        if not protocol.is_valid_device_id(device_id):
            raise BrokerAdminError(f"{device_id!r} is not a device id")
        errors = self.admin.run([
            {"command": "deleteClient", "username": device_id},
            {"command": "deleteRole", "rolename": device_role(device_id)},
        ])
        _check("deleteClient", errors[0], ("not found",))
        _check("deleteRole", errors[1], ("not found",))

    def setup(self) -> None:
        """Create (or reset) the service roles, and make receiving a message need a grant as
        much as subscribing does. Safe to run again."""
        commands: list[dict[str, Any]] = [{
            "command": "setDefaultACLAccess",
            "acls": [{"acltype": "publishClientSend", "allow": False},
                     {"acltype": "publishClientReceive", "allow": False},
                     {"acltype": "subscribe", "allow": False},
                     {"acltype": "unsubscribe", "allow": True}],
        }]
        for role in SERVICE_ROLES:
            commands.append({"command": "deleteRole", "rolename": role})
            commands.append({"command": "createRole", "rolename": role,
                             "acls": SERVICE_ROLES[role]})
        errors = self.admin.run(commands)
        _check("setDefaultACLAccess", errors[0])
        for command, error in zip(commands[1:], errors[1:], strict=True):
            _check(command["command"], error, ("not found",))

    def add_service_client(self, username: str, role: str, *,
                           password: str | None = None) -> str:
        """A client with a service role, its client id bound to its username (a collector's
        persistent session cannot be taken under another user). Returns its password (a new
        random one unless given); an existing client of that name is replaced."""
        if role not in SERVICE_ROLES:
            raise BrokerAdminError(f"role {role!r} is not one of {', '.join(SERVICE_ROLES)}")
        if not protocol.is_valid_device_id(username):
            raise BrokerAdminError(f"{username!r} is not a client name (letters, digits, _ -)")
        if password is None:
            password = secrets.token_urlsafe(PASSWORD_BYTES)
        errors = self.admin.run([
            {"command": "deleteClient", "username": username},
            {"command": "createClient", "username": username, "clientid": username,
             "password": password, "roles": [{"rolename": role}],
             "textname": f"iotmeter {role}"},
        ])
        _check("deleteClient", errors[0], ("not found",))
        _check("createClient", errors[1])
        return password

    def close(self) -> None:
        self.admin.close()


def device_credentials(settings: Settings) -> DynsecCredentials | None:
    """The device service's broker credentials: the plugin's when IOTMETER_MQTT_ADMIN_URL is
    set, else None (password files, or the embedded broker, are managed outside iotmeter)."""
    if settings.mqtt_admin_url is None:
        return None
    return DynsecCredentials.from_url(settings.mqtt_admin_url)
