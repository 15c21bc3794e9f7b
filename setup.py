"""nbdev 2 packaging: everything is read from settings.ini."""
from configparser import ConfigParser
import setuptools

config = ConfigParser(delimiters=['='])
config.read('settings.ini', encoding='utf-8')
cfg = config['DEFAULT']

expected = 'version description keywords author author_email license min_python lib_name'.split()
missing = [o for o in expected if o not in cfg]
assert not missing, f'missing settings in settings.ini: {missing}'

licenses = {'apache2': ('Apache Software License 2.0', 'OSI Approved :: Apache Software License')}
lic = licenses[cfg['license']]
requirements = cfg.get('requirements', '').split()
dev_requirements = cfg.get('dev_requirements', '').split()
ray_requirements = cfg.get('ray_requirements', '').split()  # vl_lab[ray]: the ray executor
console_scripts = cfg.get('console_scripts', '').split()

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    license=lic[0],
    classifiers=['License :: ' + lic[1], 'Programming Language :: Python :: 3.11'],
    url=cfg['git_url'],
    packages=setuptools.find_packages(include=['vl_lab', 'vl_lab.*']),
    include_package_data=True,
    install_requires=requirements,
    extras_require={'dev': dev_requirements, 'ray': ray_requirements},
    python_requires='>=' + cfg['min_python'],
    description=cfg['description'],
    keywords=cfg['keywords'].split(),
    author=cfg['author'],
    author_email=cfg['author_email'],
    project_urls={'Source': cfg['git_url']},
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    zip_safe=False,
    entry_points={'console_scripts': console_scripts, 'nbdev': [f'{cfg["lib_path"]}={cfg["lib_path"]}._modidx:d']},
)
