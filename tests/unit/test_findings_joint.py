"""The alert stage's one acked position over two inputs (ioc/partition/findings.py ``JointPosition``)."""

from __future__ import annotations

from ioc.partition.findings import JointPosition


class Inputs:
    def __init__(self) -> None:
        self.mqtt = 0
        self.nats = 0


def test_each_input_is_told_its_own_part_of_the_stored_position() -> None:
    i = Inputs()
    joint = JointPosition(lambda: i.mqtt, lambda: i.nats)
    assert joint.position() == 0 and joint.settled(0) == (0, 0)
    i.mqtt, i.nats = 5, 2
    step1 = joint.position()
    assert joint.position() == step1  # nothing new: the same position
    i.mqtt = 9
    step2 = joint.position()
    i.nats = 4
    step3 = joint.position()
    assert step1 < step2 < step3
    assert joint.settled(0) == (0, 0)  # nothing stored yet
    assert joint.settled(step2) == (9, 2)
    assert joint.settled(step1) == (9, 2)  # never back: what is acked stays acked
    assert joint.settled(step3) == (9, 4)


def test_a_drop_holds_the_mqtt_input_before_its_message_and_the_findings_handed_over() -> None:
    """The stage drops a message's signals at its bound: ``lost_after`` = its position - 1, the MQTT message
    before the one dropping (as without findings), with the findings handed over whole."""
    i = Inputs()
    joint = JointPosition(lambda: i.mqtt, lambda: i.nats)
    i.mqtt, i.nats = 3, 1
    stored = joint.position()
    i.mqtt, i.nats = 7, 2  # message 7 drops signals
    lost = joint.position() - 1
    assert joint.at(lost) == (6, 2)
    assert joint.at(stored) == (3, 1)
    assert joint.settled(min(joint.position(), lost)) == (6, 2)  # the stage's flush: never past lost_after
    # dropped while the position stood still (the analytics stage had not handed over past 7): the same mark
    lost_again = joint.position() - 1
    assert joint.at(lost_again) == (6, 2)
