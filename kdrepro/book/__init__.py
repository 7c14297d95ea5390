"""The book: run the chapter notebooks (papermill), render their pages (nbconvert, Jinja2), publish them.

- :mod:`kdrepro.book.params` — parameters read with papermill, type and value checks;
- :mod:`kdrepro.book.execute` — plan, lock, staging, publish, recover, run, render-only;
- :mod:`kdrepro.book.render` — nbconvert preprocessors and the page template;
- :mod:`kdrepro.book.glance` / :mod:`kdrepro.book.index` — "results at a glance" and the index page;
- :mod:`kdrepro.book.provenance` — git, versions, hashes, dataset, device, memory.

``run_all.py`` is the command line over it.
"""
