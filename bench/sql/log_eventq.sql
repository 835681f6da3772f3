SELECT max(seq) AS last, count(payload) AS n FROM eventq.fetch('log_reader', 1000) \gset
SELECT eventq.commit('log_reader', :last);
