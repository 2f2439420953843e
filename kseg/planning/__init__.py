"""``kseg init``: a download's fingerprint (``survey.take_fingerprint``, typed in ``fingerprint``), the plan
made from it (``rules.make_plan``), and the commented ``kseg.yaml`` (``stage.run_init``)."""
