"""The batch book, kept where the output directory's other files are: pipeline/store/book.py
(the run's and the store's own checks read it too). Its names, importable from here."""

from pipeline.store.book import ABANDONED as ABANDONED
from pipeline.store.book import BATCHES_DIR as BATCHES_DIR
from pipeline.store.book import CANCELING as CANCELING
from pipeline.store.book import COLLECTED as COLLECTED
from pipeline.store.book import CUSTOM_ID as CUSTOM_ID
from pipeline.store.book import ENDED as ENDED
from pipeline.store.book import IN_PROGRESS as IN_PROGRESS
from pipeline.store.book import LOST as LOST
from pipeline.store.book import SETTLED as SETTLED
from pipeline.store.book import UNCONFIRMED as UNCONFIRMED
from pipeline.store.book import BatchBook as BatchBook
from pipeline.store.book import Entry as Entry
from pipeline.store.book import Intent as Intent
from pipeline.store.book import Status as Status
from pipeline.store.book import Uncollected as Uncollected
from pipeline.store.book import custom_id as custom_id
from pipeline.store.book import parse_custom_id as parse_custom_id
from pipeline.store.book import uncollected as uncollected
