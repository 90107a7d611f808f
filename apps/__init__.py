"""Gradio demos of the three domains (installed as ``mmseq.apps``; needs the ``apps`` extra).

``mmseq demo [vision|medical|audio|all]`` serves them; each tab's work is done by plain functions in
``vision.py``, ``medical.py`` and ``audio.py`` that take a file path and return images, tables and a status
line, so they are tested without a browser. ``app.py`` lays them out as Gradio Blocks. See README.md here.
"""
