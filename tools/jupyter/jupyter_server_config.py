# Jupyter server config that `make lab` adds to the config path (JUPYTER_CONFIG_PATH): a notebook saved from the lab
# is written as `make export` leaves it, so the clean-notebook gate of `make test` stays green after a person has
# worked in the lab. nbdev's own pre-save hook (settings.ini: jupyter_hooks) drops execution counts and metadata;
# outputs go too, as no notebook is committed with outputs. A config of the user's own that sets a pre-save hook wins.
c = get_config()  # noqa: F821 (Jupyter's config loader provides it)


def vl_lab_clean_on_save(model, path, **kwargs):
    "nbdev's clean, then no outputs: what `make export` and the gates of `make test` expect of a notebook."
    from nbdev.clean import clean_jupyter

    clean_jupyter(path=path, model=model, **kwargs)
    if model['type'] == 'notebook' and model['content'].get('nbformat') == 4:
        for cell in model['content']['cells']:
            if cell['cell_type'] == 'code':
                cell['outputs'] = []
                cell['execution_count'] = None


c.ContentsManager.pre_save_hook = vl_lab_clean_on_save
