"""The seeded word list synthetic prompts are drawn from.

416 distinct, plain, lower-case English words chosen so that each is one token in the default
model's BPE tokenizer both with and without a leading space (tests/bench/test_workload.py checks it),
and most are one token in other BPE tokenizers too. That is what makes "one word ~ one token" a
usable approximation when no tokenizer is given (exact for the default model). Neutral words only,
so no moderation list refuses a prompt.
"""

WORDS: tuple[str, ...] = (
    'time', 'year', 'people', 'way', 'day', 'man', 'thing', 'woman', 'life', 'child', 'world', 'school',
    'state', 'family', 'student', 'group', 'country', 'problem', 'hand', 'part', 'place', 'case', 'week',
    'company', 'system', 'program', 'question', 'work', 'government', 'number', 'night', 'point', 'home',
    'water', 'room', 'mother', 'area', 'money', 'story', 'fact', 'month', 'lot', 'right', 'study', 'book',
    'eye', 'job', 'word', 'business', 'issue', 'side', 'kind', 'head', 'house', 'service', 'friend', 'father',
    'power', 'hour', 'game', 'line', 'end', 'member', 'law', 'car', 'city', 'community', 'name', 'president',
    'team', 'minute', 'idea', 'kid', 'body', 'information', 'back', 'parent', 'face', 'others', 'level',
    'office', 'door', 'health', 'person', 'art', 'war', 'history', 'party', 'result', 'change', 'reason',
    'research', 'girl', 'moment', 'air', 'teacher', 'force', 'education', 'foot', 'boy', 'age', 'policy',
    'process', 'music', 'market', 'sense', 'nation', 'plan', 'college', 'interest', 'death', 'experience',
    'effect', 'use', 'class', 'control', 'care', 'field', 'development', 'role', 'rate', 'heart', 'drug',
    'show', 'leader', 'light', 'voice', 'wife', 'mind', 'price', 'report', 'decision', 'son', 'view',
    'relationship', 'town', 'road', 'arm', 'difference', 'value', 'building', 'action', 'model', 'season',
    'tax', 'director', 'position', 'player', 'record', 'paper', 'space', 'ground', 'form', 'event',
    'official', 'matter', 'center', 'site', 'project', 'activity', 'star', 'table', 'need', 'court', 'oil',
    'cost', 'industry', 'figure', 'street', 'image', 'phone', 'data', 'picture', 'practice', 'piece', 'land',
    'product', 'doctor', 'wall', 'patient', 'worker', 'news', 'test', 'movie', 'north', 'love', 'support',
    'technology', 'step', 'baby', 'computer', 'type', 'attention', 'film', 'tree', 'source', 'organization',
    'hair', 'window', 'evidence', 'population', 'training', 'color', 'fire', 'floor', 'bank', 'river',
    'summer', 'winter', 'spring', 'stone', 'glass', 'bread', 'apple', 'chair', 'clock', 'letter', 'ocean',
    'forest', 'cloud', 'rain', 'snow', 'wind', 'storm', 'sun', 'moon', 'planet', 'bridge', 'tower', 'castle',
    'farm', 'horse', 'bird', 'fish', 'cat', 'dog', 'lion', 'bear', 'mouse', 'flower', 'grass', 'leaf', 'root',
    'seed', 'fruit', 'orange', 'sugar', 'salt', 'milk', 'soup', 'rice', 'bean', 'corn', 'plate', 'cup', 'box',
    'bag', 'coat', 'shirt', 'hat', 'ring', 'watch', 'key', 'lock', 'camera', 'radio', 'song', 'chapter',
    'page', 'message', 'signal', 'engine', 'wheel', 'train', 'plane', 'boat', 'ship', 'station', 'shop',
    'library', 'museum', 'hospital', 'church', 'factory', 'exam', 'answer', 'secret', 'map', 'path', 'edge',
    'circle', 'square', 'shape', 'pattern', 'yellow', 'green', 'blue', 'purple', 'brown', 'black', 'white',
    'gray', 'bright', 'dark', 'quiet', 'soft', 'hard', 'warm', 'cold', 'fresh', 'clean', 'simple', 'early',
    'late', 'quick', 'slow', 'happy', 'friendly', 'strong', 'weak', 'tall', 'short', 'young', 'old', 'new',
    'small', 'large', 'long', 'wide', 'deep', 'high', 'low', 'heavy', 'full', 'empty', 'open', 'close',
    'begin', 'finish', 'build', 'catch', 'cook', 'cross', 'draw', 'drive', 'eat', 'fall', 'fill', 'find',
    'follow', 'grow', 'hold', 'jump', 'keep', 'kick', 'learn', 'leave', 'listen', 'live', 'look', 'make',
    'move', 'pass', 'play', 'pull', 'push', 'read', 'reach', 'ride', 'run', 'say', 'see', 'sell', 'send',
    'sing', 'sit', 'sleep', 'stand', 'start', 'stay', 'take', 'talk', 'tell', 'think', 'touch', 'travel',
    'try', 'turn', 'visit', 'wait', 'walk', 'want', 'wash', 'wear', 'win', 'write', 'prepare', 'remember',
    'repair', 'share', 'suggest', 'agree', 'allow', 'choose', 'describe', 'expect', 'forget', 'include',
    'offer', 'order', 'own', 'plant', 'receive', 'return', 'save', 'understand',
)
