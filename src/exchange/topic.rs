//! Topic routing as a trie of words, as RabbitMQ's `rabbit_exchange_type_topic`: `*` matches
//! exactly one word, `#` zero or more; words may be empty (`a..b`), and the empty key has zero
//! words. Matching cost depends on the key and the matching paths, not on the number of
//! bindings; each (`#` node, position) pair is visited once, so patterns like `#.#.#` stay
//! polynomial.

use std::collections::HashMap;

/// A trie node.
#[derive(Debug)]
pub struct Node<D> {
    children: HashMap<Box<[u8]>, Node<D>>,
    star: Option<Box<Node<D>>>,
    hash: Option<Box<Node<D>>>,
    dests: Vec<D>,
}

impl<D> Default for Node<D> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            star: None,
            hash: None,
            dests: Vec::new(),
        }
    }
}

/// Split a routing key or binding key into words (`""` → no words, `"a."` → `a`, `""`).
pub fn split(key: &[u8]) -> Vec<&[u8]> {
    if key.is_empty() {
        return Vec::new();
    }
    key.split(|b| *b == b'.').collect()
}

impl<D: PartialEq + Clone> Node<D> {
    /// Add a binding.
    pub fn insert(&mut self, pattern: &[u8], dest: D) {
        let mut node = self;
        for w in split(pattern) {
            node = match w {
                b"*" => node.star.get_or_insert_with(Default::default),
                b"#" => node.hash.get_or_insert_with(Default::default),
                _ => node.children.entry(w.into()).or_default(),
            };
        }
        node.dests.push(dest);
    }

    /// Remove one binding; prunes nodes left empty. Returns whether it was found.
    pub fn remove(&mut self, pattern: &[u8], dest: &D) -> bool {
        let words = split(pattern);
        self.remove_at(&words, dest)
    }

    fn remove_at(&mut self, words: &[&[u8]], dest: &D) -> bool {
        let Some((w, rest)) = words.split_first() else {
            return match self.dests.iter().position(|d| d == dest) {
                Some(i) => {
                    self.dests.swap_remove(i);
                    true
                }
                None => false,
            };
        };
        match *w {
            b"*" | b"#" => {
                let slot = if *w == b"*" {
                    &mut self.star
                } else {
                    &mut self.hash
                };
                let Some(child) = slot.as_mut() else {
                    return false;
                };
                let found = child.remove_at(rest, dest);
                if child.is_empty() {
                    *slot = None;
                }
                found
            }
            _ => {
                let Some(child) = self.children.get_mut(*w) else {
                    return false;
                };
                let found = child.remove_at(rest, dest);
                if child.is_empty() {
                    self.children.remove(*w);
                }
                found
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.dests.is_empty()
            && self.children.is_empty()
            && self.star.is_none()
            && self.hash.is_none()
    }

    /// Every destination whose pattern matches `key` (may contain duplicates).
    pub fn matches<'a>(&'a self, key: &[u8], out: &mut Vec<&'a D>) {
        let words = split(key);
        let mut low = HashMap::new();
        self.walk(&words, 0, out, &mut low);
    }

    /// Walk the trie from this node at word `i`. `low` keeps, per `#` node, the lowest
    /// position from which every later position has been walked already: a `#` node is walked
    /// at most once per position, so the cost is bounded by (nodes × words) whatever the
    /// patterns (`#.#.#...` bindings and 255-word keys included).
    fn walk<'a>(
        &'a self,
        words: &[&[u8]],
        i: usize,
        out: &mut Vec<&'a D>,
        low: &mut HashMap<*const Self, usize>,
    ) {
        if i == words.len() {
            out.extend(self.dests.iter());
        } else {
            if let Some(c) = self.children.get(words[i]) {
                c.walk(words, i + 1, out, low);
            }
            if let Some(s) = &self.star {
                s.walk(words, i + 1, out, low);
            }
        }
        if let Some(h) = &self.hash {
            // `#` swallows zero or more words: walk it from every position not yet covered.
            let seen = low.entry(&**h as *const Self).or_insert(words.len() + 1);
            let end = *seen;
            if i < end {
                *seen = i;
                for j in i..end {
                    h.walk(words, j, out, low);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(patterns: &[&str], key: &str) -> Vec<String> {
        let mut t = Node::default();
        for p in patterns {
            t.insert(p.as_bytes(), p.to_string());
        }
        let mut out = Vec::new();
        t.matches(key.as_bytes(), &mut out);
        let mut v: Vec<String> = out.into_iter().cloned().collect();
        v.sort();
        v.dedup();
        v
    }

    fn m(pattern: &str, key: &str) -> bool {
        !routes(&[pattern], key).is_empty()
    }

    /// The cases of RabbitMQ's topic exchange test suite (rabbit_exchange_type_topic tests).
    #[test]
    fn rabbitmq_topic_matrix() {
        let cases: &[(&str, &str, bool)] = &[
            ("a.b.c", "a.b.c", true),
            ("a.*.c", "a.b.c", true),
            ("a.#.b", "a.b", true),
            ("a.#.b", "a.x.y.b", true),
            ("#", "", true),
            ("#", "a", true),
            ("#", "a.b.c", true),
            ("#.#", "", true),
            ("#.#.#", "a.b", true),
            ("*", "", false),
            ("*", "a", true),
            ("*", "a.b", false),
            ("*.*", "a.", true),
            ("*.*", ".", true),
            ("a.*", "a.", true),
            ("a.*", "a", false),
            ("", "", true),
            ("", "a", false),
            ("a.*.#", "a", false),
            ("a.*.#", "a.b", true),
            ("a.#.*", "a", false),
            ("#.a", "a", true),
            ("#.a", "b.a", true),
            ("#.a", "a.b", false),
            ("a..b", "a..b", true),
            ("a.*.b", "a..b", true),
            ("*.b.#", ".b", true),
            ("a.b.#", "a.b", true),
            ("#.b.#", "b", true),
            ("#.*.#", "", false),
            ("#.*.#", "x", true),
            ("a.#.#.b", "a.b", true),
            ("a.b", "a.b.c", false),
            ("a.b.c", "a.b", false),
        ];
        for (p, k, want) in cases {
            assert_eq!(m(p, k), *want, "pattern {p:?} key {k:?}");
        }
    }

    #[test]
    fn many_patterns_and_removal() {
        let mut t = Node::default();
        for p in ["a.*", "a.#", "#", "b.c", "a.*"] {
            t.insert(p.as_bytes(), p.to_string());
        }
        let mut out = Vec::new();
        t.matches(b"a.x", &mut out);
        assert_eq!(out.len(), 4); // a.* twice, a.#, #
        assert!(t.remove(b"a.*", &"a.*".to_string()));
        assert!(t.remove(b"a.*", &"a.*".to_string()));
        assert!(!t.remove(b"a.*", &"a.*".to_string()));
        assert!(t.remove(b"b.c", &"b.c".to_string()));
        assert!(
            !t.children.contains_key(&b"b"[..]),
            "empty nodes are pruned"
        );
    }

    /// The hardening issue's case: `#.#.#...` bindings of every length up to 100 and a
    /// 255-byte key cost about 10^8 operations with a list of visited pairs; bounded now.
    #[test]
    fn chains_of_hash_patterns_cost_nodes_times_words() {
        let mut t = Node::default();
        for k in 1..=100 {
            let p = vec!["#"; k].join(".");
            t.insert(p.as_bytes(), k);
            let p = format!("{p}.z");
            t.insert(p.as_bytes(), 1000 + k);
        }
        let key = vec!["w"; 127].join(".");
        let started = std::time::Instant::now();
        for _ in 0..10 {
            let mut out = Vec::new();
            t.matches(key.as_bytes(), &mut out);
            let mut got: Vec<usize> = out.into_iter().copied().collect();
            got.sort();
            got.dedup();
            assert_eq!(got, (1..=100).collect::<Vec<_>>());
        }
        // 10 matches: well under a second even unoptimised (it was minutes).
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn long_keys_and_pathological_patterns_stay_fast() {
        let key = vec!["w"; 127].join(".");
        assert_eq!(key.len(), 253);
        assert!(m("#.#.#.#.#.#.#.#.#.#.#.#.w", &key));
        assert!(!m("#.#.#.#.#.#.#.#.#.#.#.#.z", &key));
    }
}
