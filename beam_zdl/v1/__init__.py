"""Generated protobuf messages of beam_zdl's durable formats (package ``beam_zdl.v1``).

Do not edit the ``*_pb2.py``/``*_pb2.pyi`` files: change ``protos/beam_zdl/v1/*.proto``
and run ``make protos``. ``wal_pb2`` holds WAL records and segment header/footer;
``checkpoint_pb2`` the checkpoint config, batch plans and completions.
"""
